"""``mixbench perf``: every benchmark in a tiny configuration, the JSON it writes, and the pieces
of the data benchmarks (the JPEG folder, the paired ratio, the hand-written loop)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mixbench.bench.perf import data as perf_data
from mixbench.bench.train.engine import train_cell
from mixbench.cli import main
from mixbench.datasets import create_dataset
from mixbench.errors import UsageError
from mixbench.models import create_model

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU two spinning OpenMP threads make
    these tiny networks many times slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _positive_finite(section: dict) -> None:
    for key, value in section.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert math.isfinite(value) and value > 0, (key, value)


def test_quick_perf_writes_every_section(tmp_path, capsys):
    out = tmp_path / "perf.json"
    assert main(["perf", "--quick", "--device", "cpu", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["threads"] == 1
    assert set(result) == {
        "device", "threads", "width", "methods", "loader", "engine", "end_to_end", "adapters",
    }  # fmt: skip
    assert result["width"] == 4  # --quick's tiny network, whatever --width says
    loader = result["loader"]
    assert {"mixbench_img_s", "torchvision_img_s", "ratio"} <= set(loader)
    assert loader["ratio"] == pytest.approx(loader["mixbench_img_s"] / loader["torchvision_img_s"])
    assert loader["images"] == 512 and loader["image_size"] == [32, 32]
    assert "ratio_vs_plain_loop" in result["engine"]
    assert "ratio_vs_model_only" in result["end_to_end"]
    for name in ("loader", "engine", "end_to_end"):
        _positive_finite(result[name])
        assert isinstance(result[name]["meets_target"], bool)
    assert result["methods"]["erm"]["ratio_vs_erm"] == 1.0  # `methods` still runs
    # The adapters' overhead: each backbone's step through its adapter against the bare one.
    adapters = result["adapters"]
    assert "tv:resnet18" in adapters
    assert isinstance(adapters.pop("meets_target"), bool) and "0.02" in adapters.pop("target")
    for timing in adapters.values():
        assert {"forward_overhead", "staged_overhead"} <= set(timing)
        _positive_finite({k: v for k, v in timing.items() if k.endswith("_s")})
        assert timing["forward_overhead"] > -1 and timing["staged_overhead"] > -1
    printed = capsys.readouterr().out
    assert "== adapters" in printed and "staged_overhead" in printed
    assert "== loader" in printed and "ratio_vs_plain_loop" in printed
    assert "ratio_vs_model_only" in printed


def test_perf_methods_times_the_named_methods_against_erm(tmp_path, capsys):
    out = tmp_path / "perf.json"
    args = ["perf", "--quick", "--only", "methods", "--methods", "mixup,cutmix"]
    assert main([*args, "--device", "cpu", "--threads", "1", "--json", str(out)]) == 0
    methods = json.loads(out.read_text())["methods"]
    assert set(methods) == {"erm", "mixup", "cutmix"}  # ERM added as the reference
    assert methods["erm"]["ratio_vs_erm"] == 1.0
    assert main(["perf", "--quick", "--only", "methods", "--methods", "mixupp"]) == 2
    assert "mixup" in capsys.readouterr().err  # the close match is suggested
    # A named method that cannot train the benchmark's CNN: one line, exit 2.
    assert main(["perf", "--quick", "--only", "methods", "--methods", "transmix"]) == 2
    assert "needs a Vision Transformer" in capsys.readouterr().err


def test_perf_methods_trains_the_network_width_asked_for(tmp_path, capsys, monkeypatch):
    import mixbench.bench.perf.methods as perf_methods

    built = []

    def recording(name, num_classes, **kw):
        built.append(kw.get("width"))
        return create_model(name, num_classes, **kw)

    monkeypatch.setattr(perf_methods, "create_model", recording)
    out = tmp_path / "perf.json"
    args = ["perf", "--only", "methods", "--methods", "mixup", "--steps", "1", "--warmup", "0"]
    assert main([*args, "--device", "cpu", "--width", "2", "--json", str(out)]) == 0
    assert built == [2]
    result = json.loads(out.read_text())
    assert result["width"] == 2 and set(result["methods"]) == {"erm", "mixup"}
    assert main([*args, "--width", "0"]) == 2
    assert "--width must be >= 1" in capsys.readouterr().err


def test_perf_restores_the_thread_count(tmp_path):
    main(["perf", "--quick", "--only", "loader", "--device", "cpu", "--threads", "2"])
    assert torch.get_num_threads() == 1


def test_perf_reads_an_image_folder_given_as_data_root(tmp_path):
    folder = perf_data.write_jpeg_folder(tmp_path / "jpeg", n_train=160, n_test=20, num_classes=4)
    out = tmp_path / "perf.json"
    code = main(["perf", "--quick", "--only", "loader,end_to_end", "--device", "cpu",
                 "--data-root", str(folder), "--json", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["loader"]["images"] == 160 and result["loader"]["folder"] == str(folder)
    assert result["end_to_end"]["folder"] == str(folder)
    _positive_finite(result["loader"])


def test_perf_refuses_a_data_root_without_train_and_unknown_benchmarks(tmp_path, capsys):
    assert main(["perf", "--only", "loader", "--data-root", str(tmp_path), "--quick"]) == 2
    assert "has no train/ folder" in capsys.readouterr().err
    assert main(["perf", "--only", "loaders"]) == 2
    assert "valid: methods, loader, engine, end_to_end" in capsys.readouterr().err


def test_write_jpeg_folder_holds_the_synthetic_images(tmp_path):
    folder = perf_data.write_jpeg_folder(tmp_path / "jpeg", n_train=40, n_test=10, num_classes=4)
    assert sorted(p.name for p in (folder / "train").iterdir()) == [
        f"class{c:03d}" for c in range(4)
    ]
    assert len(list((folder / "train").rglob("*.jpg"))) == 40
    assert len(list((folder / "test").rglob("*.jpg"))) == 10
    bundle = create_dataset("imagefolder", folder)
    assert bundle.train.images.shape == (40, 3, 32, 32)
    assert torch.bincount(bundle.train.labels).tolist() == [10, 10, 10, 10]
    source = create_dataset("synthetic", num_classes=4, n_train=40, n_test=10)
    # the same images up to JPEG loss (noisy images lose much), in the order they were written
    written = bundle.train.images.float()
    original = source.train.images[torch.argsort(source.train.labels, stable=True)].float()
    matched = (written - original).abs().mean()
    shifted = (written - original.roll(1, dims=0)).abs().mean()
    assert matched < 0.6 * shifted
    assert (written.mean(dim=(2, 3)) - original.mean(dim=(2, 3))).abs().max() < 3
    assert perf_data.write_jpeg_folder(folder) == folder  # present: reused as it is


def test_paired_ratio_is_the_median_of_round_ratios():
    assert perf_data.paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0
    with pytest.raises(ValueError):
        perf_data.paired_ratio([1.0], [])


def test_plain_loop_does_exactly_the_trainers_work(tmp_path):
    cell = perf_data.bench_cell(device="cpu", method="mixup", batch_size=8, steps_per_epoch=3,
                                width=4, image_size=32, num_classes=4)  # fmt: skip
    cache: dict = {}
    rate, backbone = perf_data.plain_loop(cell, cache)
    assert rate > 0
    result = train_cell(cell, tmp_path / "cell", bundle_cache=cache)
    assert result.timings["train_images"] == 24
    (checkpoint,) = (tmp_path / "cell").glob("checkpoint_*.pt")
    trained = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    for name, value in backbone.state_dict().items():
        assert torch.allclose(value, trained[name], atol=1e-6), name


def test_engine_and_end_to_end_functions_report_their_ratios(tmp_path):
    sizes = {"steps_per_epoch": 1, "batch_size": 4, "width": 4, "num_classes": 4}
    engine = perf_data.perf_engine(rounds=2, warmup=0, workdir=tmp_path, **sizes)
    assert engine["rounds"] == 2 and engine["steps_per_round"] == 1
    _positive_finite(engine)
    folder = perf_data.write_jpeg_folder(tmp_path / "jpeg", n_train=40, n_test=10, num_classes=4)
    e2e = perf_data.perf_end_to_end(folder, rounds=2, warmup=0, steps=2, batch_size=8, width=4)
    _positive_finite(e2e)
    with pytest.raises(UsageError, match="needs 20 batches"):
        perf_data.perf_end_to_end(folder, rounds=1, warmup=0, steps=20, batch_size=8, width=4)
