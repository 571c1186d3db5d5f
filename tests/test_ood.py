"""The pure-tensor core of the OOD evaluator: metrics, scores, generated sets, image folders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mixbench.bench.evaluators._ood as ood
from mixbench.errors import UsageError

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def reference_fpr95(scores_in: torch.Tensor, scores_out: torch.Tensor) -> float:
    """FPR95 straight from its definition: the largest t keeping >= 95 % of in-scores >= t."""
    s_in = scores_in.double()
    kept = [v for v in s_in.tolist() if 100 * (s_in >= v).sum().item() >= 95 * len(s_in)]
    t = max(kept)
    return (scores_out.double() >= t).double().mean().item()


def sklearn_reference(scores_in: torch.Tensor, scores_out: torch.Tensor) -> dict[str, float]:
    scores = np.concatenate([scores_in.double().numpy(), scores_out.double().numpy()])
    labels = np.concatenate([np.ones(len(scores_in)), np.zeros(len(scores_out))])
    return {
        "auroc": sklearn_metrics.roc_auc_score(labels, scores),
        "aupr": sklearn_metrics.average_precision_score(labels, scores),
        "fpr95": reference_fpr95(scores_in, scores_out),
    }


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n_in,n_out", [(1, 1), (1, 7), (5, 3), (20, 20), (37, 101), (400, 250)])
def test_ood_metrics_match_sklearn(n_in: int, n_out: int, ties: bool) -> None:
    gen = torch.Generator().manual_seed(1000 * n_in + n_out + ties)
    for _ in range(3):
        if ties:  # few distinct integer values: many ties within and across the two sets
            scores_in = torch.randint(0, 6, (n_in,), generator=gen).float() + 1
            scores_out = torch.randint(0, 6, (n_out,), generator=gen).float()
        else:
            scores_in = torch.randn(n_in, generator=gen) + 0.7
            scores_out = torch.randn(n_out, generator=gen)
        got = ood.ood_metrics(scores_in, scores_out)
        want = sklearn_reference(scores_in, scores_out)
        assert set(got) == {"auroc", "aupr", "fpr95"}
        for key in want:
            assert isinstance(got[key], float)
            assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_ood_metrics_threshold_at_exact_95_percent() -> None:
    # 20 in-scores 1..20: the threshold keeping 19 of them (95 %) is 2, so out-scores >= 2 count.
    scores_in = torch.arange(1, 21).float()
    scores_out = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0])
    assert ood.ood_metrics(scores_in, scores_out)["fpr95"] == pytest.approx(2 / 5)
    # 100 in-scores: 95 kept means t = the 95th largest, 6.
    scores_in = torch.arange(1, 101).float()
    scores_out = torch.tensor([5.0, 6.0, 7.0, 100.0])
    assert ood.ood_metrics(scores_in, scores_out)["fpr95"] == pytest.approx(3 / 4)


def test_ood_metrics_hand_checked_cases() -> None:
    separated = ood.ood_metrics(torch.tensor([3.0, 4.0, 5.0]), torch.tensor([0.0, 1.0, 2.0, 2.5]))
    assert separated == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}

    constant = ood.ood_metrics(torch.full((10,), 0.3), torch.full((30,), 0.3))
    assert constant["auroc"] == 0.5
    assert constant["aupr"] == pytest.approx(10 / 40)  # precision of the one threshold
    assert constant["fpr95"] == 1.0

    reversed_ = ood.ood_metrics(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0, 4.0]))
    assert reversed_["auroc"] == 0.0
    assert reversed_["fpr95"] == 1.0
    # Thresholds 1 (P = 1/4, R = 1/2) and 0 (P = 2/5, R = 1).
    assert reversed_["aupr"] == pytest.approx(0.5 * 1 / 4 + 0.5 * 2 / 5)

    # One in-score tied with one out-score: that pair counts one half.
    half = ood.ood_metrics(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]))
    assert half["auroc"] == pytest.approx((1 + 0.5 + 1 + 1) / 4)


def test_ood_metrics_accept_other_dtypes_and_devices_alike() -> None:
    gen = torch.Generator().manual_seed(0)
    scores_in = torch.randn(50, generator=gen) + 1
    scores_out = torch.randn(60, generator=gen)
    base = ood.ood_metrics(scores_in, scores_out)
    assert ood.ood_metrics(scores_in.double(), scores_out.double()) == base
    as_int = ood.ood_metrics((scores_in * 3).round().long(), (scores_out * 3).round().long())
    assert as_int == ood.ood_metrics((scores_in * 3).round(), (scores_out * 3).round())


@pytest.mark.parametrize(
    "scores_in,scores_out",
    [
        (torch.tensor([]), torch.tensor([1.0])),
        (torch.tensor([1.0]), torch.tensor([])),
        (torch.ones(2, 2), torch.ones(3)),
        (torch.tensor(1.0), torch.ones(3)),
        (torch.tensor([1.0, float("nan")]), torch.ones(3)),
        (torch.ones(3), torch.tensor([float("inf"), 0.0])),
        (torch.ones(3), torch.tensor([float("-inf")])),
        ([1.0, 2.0], torch.ones(3)),
    ],
)
def test_ood_metrics_refuse_bad_input(scores_in, scores_out) -> None:
    with pytest.raises(UsageError) as info:
        ood.ood_metrics(scores_in, scores_out)
    assert "\n" not in str(info.value)


def test_msp_scores_known_values() -> None:
    rows = torch.tensor([[0.0, 0.0, 0.0], [math.log(3.0), 0.0, -1e9], [2.0, 2.0, 2.0]])
    got = ood.msp_scores(rows)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([1 / 3, 3 / 4, 1 / 3]))
    # Half-precision logits are scored in float32.
    assert ood.msp_scores(rows.half().clamp(-100, 100)).dtype == torch.float32
    with pytest.raises(ValueError):
        ood.msp_scores(torch.ones(3))


def test_energy_scores_known_values_and_bound() -> None:
    rows = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0], [100.0, -100.0, 0.0, 0.0]])
    got = ood.energy_scores(rows)
    want = torch.tensor(
        [math.log(4.0), 4 + math.log(1 + math.exp(-1) + math.exp(-2) + math.exp(-3)), 100.0]
    )
    torch.testing.assert_close(got, want)
    # Temperature 2: 2 * log(4 * e^(0 / 2)) on the zero row.
    torch.testing.assert_close(
        ood.energy_scores(rows, temperature=2.0)[0], torch.tensor(2 * math.log(4.0))
    )

    gen = torch.Generator().manual_seed(3)
    logits = 5 * torch.randn(200, 10, generator=gen)
    for t in (0.5, 1.0, 3.0):
        assert (ood.energy_scores(logits, t) >= logits.amax(dim=1)).all()
    # A large temperature weighs all classes; a small one tends to the max logit.
    torch.testing.assert_close(ood.energy_scores(logits, 1e-3), logits.amax(dim=1))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(UsageError):
            ood.energy_scores(logits, bad)


@pytest.mark.parametrize("kind", ood.GENERATED_OOD_SETS)
@pytest.mark.parametrize("channels", [1, 3])
def test_generated_ood_images(kind: str, channels: int) -> None:
    assert set(ood.GENERATED_OOD_SETS) == {"uniform_noise", "gaussian_noise", "synthetic"}
    state = torch.random.get_rng_state()
    images = ood.generated_ood_images(kind, 6, (12, 20), channels, torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), state), "drew from the global generator"
    assert images.shape == (6, channels, 12, 20)
    assert images.dtype == torch.uint8
    again = ood.generated_ood_images(kind, 6, (12, 20), channels, torch.Generator().manual_seed(1))
    assert torch.equal(images, again)
    other = ood.generated_ood_images(kind, 6, (12, 20), channels, torch.Generator().manual_seed(2))
    assert not torch.equal(images, other)
    assert len(images.unique()) > 20  # not a constant or near-constant image


def test_generated_noise_statistics() -> None:
    gen = torch.Generator().manual_seed(0)
    uniform = ood.generated_ood_images("uniform_noise", 64, (32, 32), 3, gen).double()
    assert uniform.min() == 0 and uniform.max() == 255
    assert uniform.mean() == pytest.approx(127.5, abs=1.0)
    assert uniform.std() == pytest.approx(math.sqrt((256**2 - 1) / 12), rel=0.02)

    gauss = ood.generated_ood_images("gaussian_noise", 64, (32, 32), 3, gen).double() / 255
    # Clipping at 2 standard deviations: about 2.3 % of pixels at each end, mean still 0.5.
    assert gauss.mean() == pytest.approx(0.5, abs=0.01)
    assert (gauss == 0).double().mean() == pytest.approx(0.0228, abs=0.005)
    assert (gauss == 1).double().mean() == pytest.approx(0.0228, abs=0.005)
    inner = gauss[(gauss > 0.1) & (gauss < 0.9)]
    assert inner.std() == pytest.approx(0.2, abs=0.03)  # the core of a N(0.5, 0.25^2)


def test_generated_synthetic_are_the_synthetic_datasets_images() -> None:
    from mixbench.datasets.synthetic import generate_gratings

    images = ood.generated_ood_images("synthetic", 4, (16, 16), 3, torch.Generator().manual_seed(5))
    want = generate_gratings(4, 10, (16, 16), torch.Generator().manual_seed(5)).images
    assert torch.equal(images, want)
    gray = ood.generated_ood_images("synthetic", 4, (16, 16), 1, torch.Generator().manual_seed(5))
    luma = (0.299 * want[:, 0] + 0.587 * want[:, 1] + 0.114 * want[:, 2]).round()
    assert (gray[:, 0].float() - luma).abs().max() <= 1


def test_generated_ood_images_refuse_bad_input() -> None:
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(UsageError, match="uniform_noise, gaussian_noise, synthetic"):
        ood.generated_ood_images("svhn", 2, (8, 8), 3, gen)
    for n, size, channels in [(0, (8, 8), 3), (2, (8,), 3), (2, (0, 8), 3), (2, (8, 8), 0)]:
        with pytest.raises(UsageError):
            ood.generated_ood_images("uniform_noise", n, size, channels, gen)
    with pytest.raises(UsageError, match="1 or 3 channels"):
        ood.generated_ood_images("synthetic", 2, (8, 8), 4, gen)


def write_images(folder: Path) -> list[Path]:
    """Seven small images of different sizes and modes, each a distinct flat colour."""
    (folder / "sub" / "deeper").mkdir(parents=True)
    names = ["a.png", "b.PNG", "sub/c.jpg", "sub/deeper/d.bmp", "sub/e.webp", "f.jpeg", "g.png"]
    paths = []
    for i, name in enumerate(names):
        value = 30 * i + 10
        image = Image.new("RGB", (10 + i, 6 + 2 * i), (value, 255 - value, 100))
        if name == "g.png":
            image = image.convert("L")  # grayscale is converted to RGB
        path = folder / name
        image.save(path)
        paths.append(path)
    (folder / "notes.txt").write_text("not an image")
    Image.new("RGB", (4, 4)).save(folder / ".hidden.png")
    (folder / "._a.png").write_bytes(b"not an image either")  # macOS resource fork
    return paths


def test_load_ood_folder_all_images_resized(tmp_path: Path) -> None:
    paths = write_images(tmp_path)
    images = ood.load_ood_folder(tmp_path, (8, 9), None, torch.Generator().manual_seed(0))
    assert images.shape == (7, 3, 8, 9)
    assert images.dtype == torch.uint8
    # Sorted by path: a.png, b.PNG, f.jpeg, g.png, sub/c.jpg, sub/deeper/d.bmp, sub/e.webp.
    order = [0, 1, 5, 6, 2, 3, 4]
    for row, i in zip(images, order):
        value = 30 * i + 10
        if paths[i].name == "g.png":
            gray = round(0.299 * value + 0.587 * (255 - value) + 0.114 * 100)
            assert (row.int() - gray).abs().max() <= 1
            continue
        want = torch.tensor([value, 255 - value, 100]).view(3, 1, 1)
        assert (row.int() - want).abs().max() <= 3  # jpeg and webp are lossy


def test_load_ood_folder_limit(tmp_path: Path) -> None:
    write_images(tmp_path)
    everything = ood.load_ood_folder(tmp_path, (8, 8), None, torch.Generator().manual_seed(0))
    picked = ood.load_ood_folder(tmp_path, (8, 8), 3, torch.Generator().manual_seed(4))
    assert picked.shape == (3, 3, 8, 8)
    # The chosen rows are rows of the full load, in the same (sorted) order.
    index = [next(i for i, row in enumerate(everything) if torch.equal(row, p)) for p in picked]
    assert index == sorted(index) and len(set(index)) == 3
    want = torch.randperm(7, generator=torch.Generator().manual_seed(4))[:3].sort().values
    assert index == want.tolist()
    again = ood.load_ood_folder(tmp_path, (8, 8), 3, torch.Generator().manual_seed(4))
    assert torch.equal(picked, again)
    assert torch.equal(ood.load_ood_folder(tmp_path, (8, 8), 7, torch.Generator()), everything)
    assert torch.equal(ood.load_ood_folder(tmp_path, (8, 8), 50, torch.Generator()), everything)


def test_load_ood_folder_errors(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    missing = tmp_path / "svhn"
    with pytest.raises(UsageError, match="no folder") as info:
        ood.load_ood_folder(missing, (8, 8), None, gen)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(UsageError, match="no images under") as info:
        ood.load_ood_folder(empty, (8, 8), None, gen)
    assert str(empty) in str(info.value) and ".png" in str(info.value)

    (empty / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UsageError, match="broken.png"):
        ood.load_ood_folder(empty, (8, 8), None, gen)

    write_images(tmp_path / "ok")
    with pytest.raises(UsageError, match="limit"):
        ood.load_ood_folder(tmp_path / "ok", (8, 8), 0, gen)
