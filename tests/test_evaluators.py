"""Tests of the evaluators: calibration, attacks, corruptions and embedding quality."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from PIL import Image
from torch import nn

from mixbench.bench.evaluators import (
    BENCHMARK_CORRUPTIONS,
    CalibrationError,
    GeneratedCorruptionSet,
    NormalizedModel,
    alignment,
    apply_corruption,
    calibration_bin_stats,
    calibration_errors,
    calibration_errors_from_stats,
    corruption_accuracy,
    default_attack_settings,
    embedding_quality,
    fgsm,
    find_corruption_set,
    generated_corruptions,
    list_folder_images,
    load_cifar_c,
    merge_bin_stats,
    pgd,
    reliability_diagram_data,
    robust_accuracy,
    uniformity,
)
from mixbench.errors import UnknownNameError, UsageError

# ----------------------------------------------------------------------------- calibration


def binary_logits(confidences: list[float]) -> torch.Tensor:
    """Two-class logits whose softmax gives class 1 probability p (p >= 0.5: predicts 1)."""
    p = torch.tensor(confidences, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1).float()


def hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    # 5 bins of width 0.2. Bin 4: conf .9 twice, one right -> conf .9, acc .5;
    # bin 3: conf .7, right -> acc 1; bin 2: conf .55, wrong -> acc 0.
    logits = binary_logits([0.9, 0.9, 0.7, 0.55])
    labels = torch.tensor([1, 0, 1, 0])
    return logits, labels


def test_calibration_hand_computed_case() -> None:
    logits, labels = hand_case()
    stats = calibration_bin_stats(logits, labels, n_bins=5)
    assert stats["bin_counts"].tolist() == [0, 0, 1, 1, 2]
    assert stats["bin_confidence_sum"].tolist() == pytest.approx([0, 0, 0.55, 0.7, 1.8], abs=1e-6)
    assert stats["bin_correct_sum"].tolist() == [0, 0, 0, 1, 1]
    errors = calibration_errors(logits, labels, n_bins=5)
    # ECE = 2/4 * .4 + 1/4 * .3 + 1/4 * .55; MCE = .55; OE = 2/4 * .9 * .4 + 1/4 * .55 * .55
    assert errors["ece"] == pytest.approx(0.4125, abs=1e-6)
    assert errors["mce"] == pytest.approx(0.55, abs=1e-6)
    assert errors["oe"] == pytest.approx(0.255625, abs=1e-6)
    assert set(errors) == {"ece", "mce", "oe"}
    assert all(isinstance(v, float) for v in errors.values())


def test_calibration_perfectly_calibrated_is_zero() -> None:
    # 400 examples of confidence .75 with 300 right, 100 of confidence .95 with 95 right.
    logits = binary_logits([0.75] * 400 + [0.95] * 100)
    labels = torch.tensor([1] * 300 + [0] * 100 + [1] * 95 + [0] * 5)
    errors = calibration_errors(logits, labels)
    assert errors["ece"] == pytest.approx(0.0, abs=1e-6)
    assert errors["mce"] == pytest.approx(0.0, abs=1e-6)
    assert errors["oe"] == pytest.approx(0.0, abs=1e-6)


def test_calibration_fully_overconfident_is_one() -> None:
    # Confidence exactly 1 (last bin) and every prediction wrong.
    logits = torch.tensor([[100.0, -100.0, -100.0]] * 8)
    labels = torch.tensor([1, 2] * 4)
    stats = calibration_bin_stats(logits, labels, n_bins=15)
    assert stats["bin_counts"].tolist() == [0] * 14 + [8]
    errors = calibration_errors_from_stats(stats)
    assert errors == pytest.approx({"ece": 1.0, "mce": 1.0, "oe": 1.0})


def test_calibration_underconfident_has_no_overconfidence_error() -> None:
    logits = binary_logits([0.6] * 10)
    labels = torch.ones(10, dtype=torch.int64)
    errors = calibration_errors(logits, labels, n_bins=10)
    assert errors["ece"] == pytest.approx(0.4, abs=1e-6)
    assert errors["oe"] == 0.0


def test_calibration_refuses_bad_input() -> None:
    logits, labels = hand_case()
    with pytest.raises(ValueError):
        calibration_errors(logits, labels[:3])
    with pytest.raises(TypeError):
        calibration_errors(logits, labels.float())
    with pytest.raises(ValueError):
        calibration_errors(logits, labels, n_bins=0)
    with pytest.raises(ValueError):
        calibration_errors(logits[:0], labels[:0])


def test_reliability_diagram_data() -> None:
    logits, labels = hand_case()
    records = reliability_diagram_data(calibration_bin_stats(logits, labels, n_bins=5))
    assert [r["count"] for r in records] == [0, 0, 1, 1, 2]
    assert records[0] == {
        "lower": 0.0,
        "upper": 0.2,
        "count": 0,
        "confidence": None,
        "accuracy": None,
    }
    assert records[4]["lower"] == pytest.approx(0.8) and records[4]["upper"] == 1.0
    assert records[4]["confidence"] == pytest.approx(0.9) and records[4]["accuracy"] == 0.5


def random_classification(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, 10, generator=g)
    labels = torch.where(
        torch.rand(n, generator=g) < 0.6, logits.argmax(1), torch.randint(10, (n,), generator=g)
    )
    return logits, labels


def test_metric_equals_pure_function_and_accumulates() -> None:
    logits, labels = random_classification(300, seed=1)
    metric = CalibrationError(n_bins=15)
    metric.update((logits[:120], labels[:120]))
    metric.update((logits[120:], labels[120:]))
    result = metric.compute()
    expected = calibration_errors(logits, labels, n_bins=15)
    for key in ("ece", "mce", "oe"):
        assert result[key] == pytest.approx(expected[key], abs=1e-7)
    stats = calibration_bin_stats(logits, labels, 15)
    assert result["bin_counts"] == stats["bin_counts"].tolist()
    assert sum(result["bin_counts"]) == 300
    assert result["bin_confidence_sum"] == pytest.approx(stats["bin_confidence_sum"].tolist())
    # The metric's output is accepted by the pure functions as is.
    assert calibration_errors_from_stats(result)["ece"] == pytest.approx(expected["ece"])
    assert len(reliability_diagram_data(result)) == 15
    merged = merge_bin_stats(
        [
            calibration_bin_stats(logits[:7], labels[:7]),
            calibration_bin_stats(logits[7:], labels[7:]),
        ]
    )
    assert calibration_errors_from_stats(merged) == pytest.approx(expected)
    metric.reset()
    metric.update((logits[:5], labels[:5]))
    assert sum(metric.compute()["bin_counts"]) == 5


def test_metric_attached_to_engine() -> None:
    logits, labels = random_classification(64, seed=2)
    batches = [(logits[i : i + 16], labels[i : i + 16]) for i in range(0, 64, 16)]
    engine = Engine(lambda _engine, batch: batch)
    CalibrationError(n_bins=10).attach(engine, "calibration")
    state = engine.run(batches)
    expected = calibration_errors(logits, labels, n_bins=10)
    assert state.metrics["ece"] == pytest.approx(expected["ece"])
    assert state.metrics["calibration"]["oe"] == pytest.approx(expected["oe"])


# ----------------------------------------------------------------------------- attacks


def synthetic_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of 3x4x4 images: bright (label 1) or dark (label 0) around grey, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(2, (n,), generator=g)
    level = 0.5 + (2 * labels.float() - 1) * (0.04 + 0.08 * torch.rand(n, generator=g))
    images = level.view(n, 1, 1, 1) + 0.1 * torch.randn(n, 3, 4, 4, generator=g)
    return images.clamp(0, 1), labels


def train_tiny_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny MLP (with BatchNorm) trained for 300 steps on the synthetic images, and test data."""
    torch.manual_seed(0)  # parameter initialisation of the tiny network only
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(48, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 2)
    )
    model = NormalizedModel(net, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    x_train, y_train = synthetic_images(1024, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        idx = torch.randint(1024, (128,), generator=g)
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x_test, y_test = synthetic_images(512, seed=2)
    return model, x_test, y_test


@pytest.fixture(scope="module")
def trained_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return train_tiny_model()


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return robust_accuracy(model, (images, labels), None)["accuracy"]


def test_attacks_lower_accuracy_and_pgd_beats_fgsm(trained_model) -> None:
    model, x, y = trained_model
    clean = accuracy(model, x, y)
    assert clean > 0.95
    previous_pgd = clean
    for eps in (2 / 255, 8 / 255, 16 / 255, 32 / 255):
        x_fgsm = fgsm(model, x, y, eps)
        x_pgd = pgd(
            model,
            x,
            y,
            eps,
            step_size=eps / 4,
            steps=10,
            generator=torch.Generator().manual_seed(0),
        )
        for x_adv in (x_fgsm, x_pgd):
            assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
            assert float((x_adv - x).abs().max()) <= eps + 1e-6
            assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        acc_fgsm = accuracy(model, x_fgsm, y)
        acc_pgd = accuracy(model, x_pgd, y)
        assert acc_fgsm <= clean and acc_pgd <= clean
        assert acc_pgd <= acc_fgsm
        assert acc_pgd <= previous_pgd  # a larger ball never helps the model
        previous_pgd = acc_pgd
    assert acc_fgsm < clean - 0.5 and acc_pgd < clean - 0.5  # eps 32/255 breaks the model


def test_attacks_leave_the_model_untouched(trained_model) -> None:
    model, x, y = trained_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    model.train()
    model.model[2].eval()  # a mixed state must come back as it was
    params[0].requires_grad_(False)
    params[0].grad = None
    for p in params[1:]:
        p.grad = torch.full_like(p, 0.5)
    modes = [m.training for m in model.modules()]
    with torch.no_grad():  # attacks enable gradients themselves
        x_adv = fgsm(model, x[:64], y[:64], 8 / 255)
        pgd(model, x[:64], y[:64], 8 / 255, 2 / 255, 3)
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert [m.training for m in model.modules()] == modes
    assert params[0].grad is None and not params[0].requires_grad
    assert all(p.requires_grad for p in params[1:])
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in params[1:])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm running statistics included
    params[0].requires_grad_(True)
    for p in params:
        p.grad = None
    model.eval()


def test_pgd_is_deterministic_under_a_seed(trained_model) -> None:
    model, x, y = trained_model
    run = functools.partial(pgd, model, x[:32], y[:32], 8 / 255, 2 / 255)
    a = run(5, generator=torch.Generator().manual_seed(3))
    b = run(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    start_a = run(0, generator=torch.Generator().manual_seed(3))
    start_b = run(0, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(start_a, start_b)
    assert float((start_a - x[:32]).abs().max()) <= 8 / 255 + 1e-6


def test_attacks_under_autocast(trained_model) -> None:
    model, x, y = trained_model
    eps = 16 / 255
    x_adv = fgsm(model, x, y, eps, amp_dtype=torch.bfloat16)
    assert x_adv.dtype == torch.float32
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert accuracy(model, x_adv, y) < accuracy(model, x, y)
    x_pgd = pgd(model, x, y, eps, eps / 4, 5, amp_dtype=torch.bfloat16)
    assert float((x_pgd - x).abs().max()) <= eps + 1e-6


def test_robust_accuracy_over_batches(trained_model) -> None:
    model, x, y = trained_model
    attack = functools.partial(fgsm, eps=16 / 255)
    whole = robust_accuracy(model, (x, y), attack, batch_size=512)
    batched = robust_accuracy(
        model, [(x[i : i + 100], y[i : i + 100]) for i in range(0, 512, 100)], attack
    )
    assert whole["count"] == batched["count"] == 512
    assert whole["accuracy"] == pytest.approx(batched["accuracy"])
    limited = robust_accuracy(model, (x, y), None, batch_size=50, limit=120)
    assert limited["count"] == 120
    as_uint8 = (x * 255).round().to(torch.uint8)
    assert robust_accuracy(model, (as_uint8, y), None)["accuracy"] == pytest.approx(
        accuracy(model, as_uint8.float() / 255, y)
    )


def test_attack_input_checks(trained_model) -> None:
    model, x, y = trained_model
    with pytest.raises(ValueError, match="NormalizedModel"):
        fgsm(model, x * 4 - 2, y, 8 / 255)
    with pytest.raises(UsageError):
        pgd(model, x, y, 8 / 255, 2 / 255, steps=-1)
    with pytest.raises(UsageError):
        fgsm(model, x, y, -0.1)


def test_default_attack_settings() -> None:
    small = default_attack_settings(32)
    assert small["fgsm"]["eps"] == 8 / 255
    assert small["pgd"] == {"eps": 8 / 255, "step_size": 2 / 255, "steps": 10}
    large = default_attack_settings((64, 64))
    assert large["fgsm"]["eps"] == 4 / 255
    assert large["pgd"] == {"eps": 4 / 255, "step_size": 1 / 255, "steps": 10}


# ----------------------------------------------------------------------------- corruptions


class MeanThreshold(nn.Module):
    """Predicts 1 where the mean pixel exceeds 0.5, else 0: a model with known answers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5], dim=1)


def write_cifar_c(folder: Path, corruptions: dict[str, list[int]], per_severity: int = 6) -> None:
    """Official layout: ``<corruption>.npy`` (5 * N, 32, 32, 3) uint8 and ``labels.npy``."""
    folder.mkdir(parents=True)
    for name, levels in corruptions.items():
        blocks = [np.full((per_severity, 32, 32, 3), v, dtype=np.uint8) for v in levels]
        for s, block in enumerate(blocks):
            block[:, 0, 0, 0] = np.arange(per_severity) + 10 * s  # identifies each image
        np.save(folder / f"{name}.npy", np.concatenate(blocks))
    np.save(folder / "labels.npy", np.ones(5 * per_severity, dtype=np.int64))


def test_cifar_c_loader_and_accuracy(tmp_path: Path) -> None:
    write_cifar_c(
        tmp_path / "CIFAR-10-C",
        {"snow": [200, 200, 50, 50, 50], "gaussian_noise": [200] * 5, "spatter": [0] * 5},
    )
    found, reason = find_corruption_set(tmp_path, "cifar10")
    assert found is not None and reason == ""
    assert found.corruptions == ("gaussian_noise", "snow")  # benchmark order, extras left out
    assert "spatter" not in found.missing and "fog" in found.missing
    assert len(found.missing) == len(BENCHMARK_CORRUPTIONS) - 2
    with_extra, _ = find_corruption_set(tmp_path, "CIFAR-10-C", include_extra=True)
    assert with_extra is not None and with_extra.corruptions[-1] == "spatter"

    images, labels = load_cifar_c(found.path, "snow", 3)
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.uint8
    assert images[:, 0, 0, 0].tolist() == [20, 21, 22, 23, 24, 25]
    assert int(images[0, 1, 5, 5]) == 50
    assert labels.tolist() == [1] * 6 and labels.dtype == torch.int64
    subset, _ = load_cifar_c(found.path, "snow", 5, indices=[4, 1])
    assert subset[:, 0, 0, 0].tolist() == [44, 41]

    result = corruption_accuracy(MeanThreshold(), found, batch_size=4)
    assert result["per_severity"] == {"gaussian_noise": [1.0] * 5, "snow": [1, 1, 0, 0, 0]}
    assert result["per_corruption"] == pytest.approx({"gaussian_noise": 1.0, "snow": 0.4})
    assert result["mean"] == pytest.approx(0.7)
    assert result["examples"] == 6 and result["official"] is True
    limited = corruption_accuracy(MeanThreshold(), found, limit=3)
    assert limited["examples"] == 3 and limited["mean"] == pytest.approx(0.7)


def test_cifar_c_labels_of_one_severity_are_repeated(tmp_path: Path) -> None:
    folder = tmp_path / "CIFAR-100-C"
    write_cifar_c(folder, {"fog": [9] * 5}, per_severity=4)
    np.save(folder / "labels.npy", np.array([3, 1, 4, 1], dtype=np.int64))
    found, _ = find_corruption_set(tmp_path, "cifar100")
    assert found is not None
    assert load_cifar_c(found.path, "fog", 2)[1].tolist() == [3, 1, 4, 1]


def test_truncated_npy_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "CIFAR-10-C"
    write_cifar_c(folder, {"fog": [9] * 5})
    path = folder / "fog.npy"
    intact = path.read_bytes()
    path.write_bytes(intact[:-100])
    found, _ = find_corruption_set(tmp_path, "cifar10")
    assert found is not None
    with pytest.raises(UsageError, match="fog.npy"):
        load_cifar_c(found.path, "fog", 1)
    path.write_bytes(intact)
    assert load_cifar_c(found.path, "fog", 1)[0].shape == (6, 3, 32, 32)
    (folder / "labels.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(UsageError, match="labels.npy"):
        corruption_accuracy(MeanThreshold(), found)


def test_absent_corruption_sets_give_a_reason(tmp_path: Path) -> None:
    found, reason = find_corruption_set(tmp_path, "cifar10")
    assert found is None and "CIFAR-10-C" in reason and str(tmp_path) in reason
    found, reason = find_corruption_set(None, "imagenet")
    assert found is None and "ImageNet-C" in reason
    found, reason = find_corruption_set(tmp_path, "synthetic")
    assert found is None and "synthetic" in reason
    (tmp_path / "Tiny-ImageNet-C").mkdir()
    found, reason = find_corruption_set(tmp_path, "tiny_imagenet")
    assert found is None and "none" in reason


def write_image_folder(folder: Path, classes: dict[str, list[int]]) -> None:
    """``<corruption>/<severity>/<class>/<image>.png`` with constant-valued 8x8 images."""
    for severity in range(1, 6):
        for cls, values in classes.items():
            target = folder / "contrast" / str(severity) / cls
            target.mkdir(parents=True)
            for i, v in enumerate(values):
                value = v if severity < 4 else 255 - v
                image = np.full((8, 8, 3), value, dtype=np.uint8)
                Image.fromarray(image).save(target / f"img{i}.png")


def test_image_folder_loader_and_accuracy(tmp_path: Path) -> None:
    folder = tmp_path / "Tiny-ImageNet-C"
    write_image_folder(folder, {"n02": [220, 230], "n01": [10]})
    found, reason = find_corruption_set(tmp_path, "tiny-imagenet")
    assert found is not None, reason
    assert found.corruptions == ("contrast",) and found.layout == "folders"
    items = list_folder_images(found.path, "contrast", 1)
    assert [(p.parent.name, y) for p, y in items] == [("n01", 0), ("n02", 1), ("n02", 1)]
    ((images, labels),) = list(found.batches("contrast", 2, batch_size=8))
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.uint8
    assert images[:, 0, 0, 0].tolist() == [10, 220, 230] and labels.tolist() == [0, 1, 1]
    result = corruption_accuracy(MeanThreshold(), found, batch_size=2)
    assert result["per_severity"]["contrast"] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert result["mean"] == pytest.approx(0.6)
    remapped = list_folder_images(found.path, "contrast", 1, class_to_idx={"n01": 7, "n02": 3})
    assert [y for _, y in remapped] == [7, 3, 3]
    (folder / "contrast" / "5" / "n01" / "img0.png").write_bytes(b"not an image")
    with pytest.raises(UsageError, match="img0.png"):
        corruption_accuracy(MeanThreshold(), found)


def smooth_images(n: int = 4, seed: int = 0) -> torch.Tensor:
    """Natural-looking uint8 test images: upsampled coarse noise, away from 0 and 255."""
    g = torch.Generator().manual_seed(seed)
    coarse = 0.2 + 0.6 * torch.rand(n, 3, 6, 6, generator=g)
    fine = nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    return (fine * 255).round().to(torch.uint8)


@pytest.mark.parametrize("name", generated_corruptions())
def test_generated_corruption(name: str) -> None:
    images = smooth_images()
    outputs = {
        s: apply_corruption(name, images, s, torch.Generator().manual_seed(0)) for s in range(1, 6)
    }
    for out in outputs.values():
        assert out.shape == images.shape and out.dtype == torch.uint8
    change = [float((outputs[s].float() - images.float()).abs().mean()) for s in range(1, 6)]
    assert change[0] > 0
    assert change[4] > change[0]
    assert min(change) == change[0] and max(change) == change[4], change
    again = apply_corruption(name, images, 3, torch.Generator().manual_seed(0))
    assert torch.equal(again, outputs[3])
    as_float = apply_corruption(name, images.float() / 255, 3, torch.Generator().manual_seed(0))
    assert as_float.dtype == torch.float32
    assert float(as_float.min()) >= 0 and float(as_float.max()) <= 1
    assert float((as_float * 255 - outputs[3].float()).abs().max()) <= 1.0


def test_generated_noise_depends_on_the_seed() -> None:
    images = smooth_images()
    for name in ("gaussian_noise", "shot_noise", "impulse_noise"):
        a = apply_corruption(name, images, 2, torch.Generator().manual_seed(0))
        b = apply_corruption(name, images, 2, torch.Generator().manual_seed(1))
        assert not torch.equal(a, b)


def test_generated_corruption_known_values() -> None:
    grey = torch.full((1, 3, 8, 8), 0.5)
    grey[0, :, 0, 0] = torch.tensor([0.2, 0.4, 0.8])
    contrast = apply_corruption("contrast", grey, 5)
    mean = float(grey.mean())
    assert torch.allclose(contrast, (grey - mean) * 0.15 + mean)
    bright = apply_corruption("brightness", grey, 5)
    # HSV value +0.3: (0.2, 0.4, 0.8) has value 0.8 -> 1.0, scaled by 1.25 (hue, saturation kept)
    assert torch.allclose(bright[0, :, 0, 0], torch.tensor([0.25, 0.5, 1.0]))
    assert torch.allclose(bright[0, :, 1, 1], torch.full((3,), 0.8))
    black = apply_corruption("brightness", torch.zeros(1, 3, 2, 2), 1)
    assert torch.allclose(black, torch.full_like(black, 0.05))
    flat = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(apply_corruption("gaussian_blur", flat, 5), flat, atol=1e-6)
    assert torch.allclose(apply_corruption("pixelate", flat, 5), flat, atol=1e-6)


def test_generated_corruption_input_checks() -> None:
    images = smooth_images()
    with pytest.raises(UnknownNameError, match="gaussian_noise"):
        apply_corruption("gausian_noise", images, 1)
    with pytest.raises(UsageError):
        apply_corruption("contrast", images, 6)
    with pytest.raises(ValueError):
        apply_corruption("contrast", images[0], 1)


def test_generated_corruption_accuracy_is_deterministic() -> None:
    images = smooth_images(n=12, seed=3)
    labels = (images.float().mean(dim=(1, 2, 3)) > 127.5).long()
    source = GeneratedCorruptionSet(
        images, labels, seed=5, corruptions=("gaussian_noise", "contrast")
    )
    first = corruption_accuracy(MeanThreshold(), source, batch_size=5)
    second = corruption_accuracy(MeanThreshold(), source, batch_size=5)
    assert first == second
    assert first["official"] is False and first["examples"] == 12
    assert set(first["per_corruption"]) == {"gaussian_noise", "contrast"}
    assert all(len(v) == 5 for v in first["per_severity"].values())
    assert first["mean"] == pytest.approx(sum(first["per_corruption"].values()) / 2)
    subset = corruption_accuracy(
        MeanThreshold(), source, limit=4, generator=torch.Generator().manual_seed(1)
    )
    assert subset["examples"] == 4
    with pytest.raises(UsageError):
        GeneratedCorruptionSet(images, labels, corruptions=("fog",))


# ----------------------------------------------------------------------------- embeddings


def test_alignment_known_values() -> None:
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    same = torch.stack([e1, 3 * e1, e2, 0.5 * e2])  # identical directions within each class
    assert alignment(same, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.0, abs=1e-12)
    # One class at right angles: ||u - v||^2 = 2 for both ordered pairs.
    assert alignment(torch.stack([e1, e2]), torch.tensor([4, 4])) == pytest.approx(2.0)
    # Class 0: e1, e1, -e1 -> ordered pairs 0, 0, 4, 4, 4, 4 -> mean 8/3; class 1 alone adds none.
    mixed = torch.stack([e1, e1, -e1, e2])
    assert alignment(mixed, torch.tensor([0, 0, 0, 1])) == pytest.approx(8 / 3)
    with pytest.raises(UsageError):
        alignment(torch.stack([e1, e2]), torch.tensor([0, 1]))


def test_uniformity_known_values() -> None:
    u = torch.tensor([[0.0, 2.0, 0.0], [0.0, -1.0, 0.0]])
    assert uniformity(u, t=2) == pytest.approx(-8.0)
    assert uniformity(u, t=0.5) == pytest.approx(-2.0)
    e1 = torch.tensor([1.0, 0.0])
    three = torch.stack([e1, e1, -e1])
    expected = math.log((2 * 1 + 4 * math.exp(-8)) / 6)
    assert uniformity(three, t=2) == pytest.approx(expected)
    big = 1e4 * torch.stack([e1, -e1])
    assert uniformity(big, t=100) == pytest.approx(-400.0)  # no underflow to -inf


def test_embedding_subsample_is_fixed_by_the_generator() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(300, 8, generator=g)
    y = torch.randint(5, (300,), generator=g)
    a = embedding_quality(z, y, num_samples=100, generator=torch.Generator().manual_seed(7))
    b = embedding_quality(z, y, num_samples=100, generator=torch.Generator().manual_seed(7))
    c = embedding_quality(z, y, num_samples=100, generator=torch.Generator().manual_seed(8))
    assert a == b and a != c
    full = embedding_quality(z, y, num_samples=None)
    assert full["alignment"] == pytest.approx(alignment(z, y))
    assert full["uniformity"] == pytest.approx(uniformity(z))
    assert uniformity(z, num_samples=50, generator=torch.Generator().manual_seed(1)) == uniformity(
        z, num_samples=50, generator=torch.Generator().manual_seed(1)
    )
