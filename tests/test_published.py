"""What the published pages say: the sweep table, the leaderboard's protocol block and its
paper reference section, and that the committed pages equal what mixbench regenerates from
the committed results (so they can never drift from their data or be edited by hand)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from mixbench.bench.run.cells import build_cells
from mixbench.cli import main
from mixbench.config import load_preset
from mixbench.leaderboard import build_tables
from mixbench.leaderboard.markdown import render_leaderboard
from mixbench.leaderboard.protocol import describe_software, describe_table
from mixbench.leaderboard.sweep import base_setting, render_sweep_page, swept_parameters

from .records import finished_record

ROOT = Path(__file__).resolve().parent.parent
CPU = {"cpu": "Test CPU", "cpus": 2, "torch_threads": 2, "gpu": None, "gpus": 0}
VERSIONS = {
    "mixbench": "0.1.0",
    "commit": "0123456789abcdef0123456789abcdef01234567",
    "dirty": False,
    "torch": "2.14.1",
    "torchvision": "0.29.1",
    "ignite": "0.5.5",
    "python": "3.11.7",
    "cuda": None,
    "hardware": CPU,
}
DATA = {"name": "CIFAR-10", "num_classes": 10, "image_size": [32, 32], "train_images": 10000,
        "test_images": 10000}  # fmt: skip


def _records(preset: str, top1_of, *, seeds=(0,), versions=VERSIONS, data=DATA, **overrides):
    matrix = load_preset(preset)
    matrix.seeds = list(seeds)
    for key, value in overrides.items():
        setattr(matrix, key, value)
    out = []
    for i, cell in enumerate(build_cells(matrix)):
        top1 = top1_of(cell)
        metrics = {"top1": top1, "best_top1": top1 + 0.01, "nll": 1.0, "ece": 0.05, "oe": 0.01}
        out.append(
            finished_record(
                cell,
                top1,
                metrics={**metrics, "data": data},
                timings={"train_seconds": 600.0, "train_images_per_s": 500.0},
                versions=versions,
                finished_at=1_795_000_000.0 + 3600 * i,
            )
        )
    return out


def _sweep_top1(cell) -> float:
    if cell.method in ("erm", "mixup"):
        return {"erm": 0.775, "mixup": 0.768}[cell.method]
    p = cell.params
    return 0.70 + 0.05 * p["clean_weight"] + 0.01 * (p["alpha"] < 1) + 0.001 * cell.seed


def test_sweep_preset_gives_three_seeds_to_the_best_two_settings_of_each_method() -> None:
    seeds: dict[tuple, set[int]] = {}
    for cell in build_cells(load_preset("sweep-multimix")):
        seeds.setdefault((cell.method, json.dumps(cell.params, sort_keys=True)), set()).add(
            cell.seed
        )
    assert len(seeds) == 20  # 9 settings x 2 methods, plus erm and mixup
    tripled = sorted(method for (method, _), s in seeds.items() if s == {0, 1, 2})
    assert tripled == ["dense_multimix", "dense_multimix", "multimix", "multimix"]
    assert all(s in ({0}, {0, 1, 2}) for s in seeds.values())


def test_sweep_page_has_a_column_per_swept_parameter_and_one_row_per_setting() -> None:
    records = [r for r in _records("sweep-multimix", _sweep_top1) if r["seed"] == 0]
    (table,) = build_tables(records)
    assert swept_parameters(table) == ["alpha", "m", "prob", "fallback", "clean_weight"]
    multimix = [r for r in table.rows if r.method == "multimix"]
    assert base_setting(multimix, swept_parameters(table)) == {
        "alpha": "1.0", "m": "0", "prob": "0.5", "fallback": "mixup", "clean_weight": "0.0"
    }  # fmt: skip
    page = render_sweep_page([table], "sweep-multimix")
    lines = [line for line in page.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:8] == ["method", "alpha", "m", "prob", "fallback", "clean_weight", "seeds",
                          "top-1 (%)"]  # fmt: skip
    body = lines[2:]
    assert len(body) == 20  # 9 settings x 2 methods, plus erm and mixup
    assert body[0].startswith("| `erm`") and body[1].startswith("| `mixup` (alpha=1.0)")
    cells = {tuple(c.strip() for c in line.strip("|").split("|")) for line in body}
    # the base row, then the variants: the changed value in bold, one decimal, one seed
    assert ("`multimix` (base)", "1.0", "0", "0.5", "mixup", "0.0", "1", "70.0", "-7.5", "71.0",
            "5.0") in cells  # fmt: skip
    assert ("`dense_multimix`", "1.0", "0", "0.5", "mixup", "**1.0**", "1", "75.0", "-2.5",
            "76.0", "5.0") in cells  # fmt: skip
    assert ("`multimix`", "**0.05**", "0", "0.5", "mixup", "0.0", "1", "71.0", "-6.5", "72.0",
            "5.0") in cells  # fmt: skip
    assert (
        "Not swept, the same in every row: attention=similarity, fallback_alpha=1.0, n=1000."
        in page
    )
    assert "- `m`: each generated example mixes m examples of the batch of its own" in page


def test_sweep_page_pools_seeds_as_mean_and_std() -> None:
    records = _records("sweep-multimix", _sweep_top1, seeds=(0, 1, 2))
    page = render_sweep_page(build_tables(records), "sweep-multimix")
    # seeds add 0.0, 0.1, 0.2 points: mean 70.1, std 0.1
    assert re.search(r"`multimix` \(base\) .*\| 3 +\| 70\.1 ± 0\.1 ", page)


def test_sweep_table_command(tmp_path, capsys) -> None:
    results = tmp_path / "results"
    results.mkdir()
    with open(results / "sweep.jsonl", "w") as f:
        for rec in _records("sweep-multimix", _sweep_top1):
            f.write(json.dumps(rec) + "\n")
    out = tmp_path / "docs" / "sweep.md"
    args = ["sweep-table", "--from", str(results), "--preset", "sweep-multimix", "--out", str(out)]
    assert main(args) == 0
    first = out.read_bytes()
    assert main(args) == 0 and out.read_bytes() == first
    assert main([*args[:3], "--preset", "short", "--out", str(tmp_path / "x.md")]) == 2
    err = capsys.readouterr().err
    assert "no finished cells of preset 'short'" in err and "sweep-multimix" in err
    assert not (tmp_path / "x.md").exists()


def test_leaderboard_states_the_protocol_and_warns_of_short_cpu_runs() -> None:
    records = _records("short", lambda c: 0.8, seeds=(0, 1, 2), methods=["erm", "mixup"])
    records[-1]["versions"] = {**VERSIONS, "dirty": True}
    text = render_leaderboard(build_tables(records), {})
    assert "## `short` · CIFAR-10 · preactresnet18" in text
    assert (
        "**Short CPU runs, not the papers' protocol.** 30 epochs on 10,000 training images on a "
        "CPU; the papers' protocol for CIFAR-10 is 2,000 epochs on GPUs." in text
    )
    assert "- data set: CIFAR-10 (`imagefolder`, train_subset=10000; 10 classes, 10,000 " in text
    assert "- seeds: 3 seeds (0, 1, 2)" in text
    assert "- hardware: Test CPU, 2 CPUs, 2 torch threads, no GPU" in text
    # Cells that differ only in their commit (here: local changes) share one software entry.
    software = "- software: mixbench 0.1.0 (commits 0123456, 0123456 with local changes), torch"
    assert software in text
    assert "- finished: 2026-11-18 to 2026-11-18" not in text and "- finished: 2026-11-18" in text


def test_software_lists_commits_once_per_set_of_versions() -> None:
    records = _records("short", lambda c: 0.8, seeds=(0, 1, 2), methods=["erm"])
    records[1]["versions"] = {**VERSIONS, "commit": "fedcba9876"}
    records[2]["versions"] = {**VERSIONS, "commit": "abcdef1234", "torch": "2.15.0"}
    (line,) = [x for x in describe_table(build_tables(records)[0]).splitlines() if "software" in x]
    assert line == (
        "- software: mixbench 0.1.0 (commits 0123456, fedcba9), torch 2.14.1, torchvision "
        f"{VERSIONS['torchvision']}, ignite {VERSIONS['ignite']}, Python {VERSIONS['python']}; "
        "mixbench 0.1.0 (commit abcdef1), torch 2.15.0, torchvision "
        f"{VERSIONS['torchvision']}, ignite {VERSIONS['ignite']}, Python {VERSIONS['python']}"
    )
    assert describe_software([]) == ""
    assert describe_software([{"mixbench": "0.1.0"}]) == "mixbench 0.1.0"  # nothing else stored


def test_long_gpu_runs_get_no_warning() -> None:
    gpu = {**VERSIONS, "hardware": {**CPU, "gpu": "NVIDIA H100", "gpus": 1}}
    records = _records(
        "paper-cifar10", lambda c: 0.95, versions=gpu, methods=["erm"], models=["preactresnet18"]
    )
    text = render_leaderboard(build_tables(records), {})
    assert "Short" not in text
    assert "- hardware: NVIDIA H100 x1, Test CPU, 2 CPUs" in text


def test_paper_reference_puts_mixbench_beside_the_published_number() -> None:
    records = _records(
        "paper-cifar10",
        lambda c: 0.96 + 0.001 * c.seed,
        seeds=(0, 1),
        methods=["alignmixup"],
        models=["preactresnet18"],
    )
    text = render_leaderboard(build_tables(records), {})
    section = text[text.index("## Paper reference") :]
    rows = {"".join(cell.strip() for cell in line.split("|")[1:4]): line
            for line in section.splitlines() if line.startswith("| CIFAR")}  # fmt: skip
    ran = rows["CIFAR-10`preactresnet18``alignmixup`"]
    assert "97.05" in ran and "96.05 ± 0.07" in ran and "97.05 ± 0.07" in ran
    assert "`mixbench run --preset paper-cifar10`" in ran and "2,000, best" in ran
    not_run = rows["CIFAR-10`wrn16_8``alignmixup`"]
    assert "96.91" in not_run and not_run.rstrip("| ").endswith("—")
    # StyleMix and StyleCutMix: reference rows that mixbench never trains.
    for method in ("stylemix", "stylecutmix"):
        row = rows[f"CIFAR-10`preactresnet18``{method}`"]
        assert "number not transcribed" in row
        assert "published only: needs pretrained AdaIN VGG-19 weights" in row
        assert "mixbench run" not in row and row.rstrip("| ").endswith("—")
    # A page on one benchmark lists the targets of every benchmark, not yet run ones dashed.
    every = [
        line for line in section.splitlines() if line.startswith(("| CIFAR", "| Tiny", "| Ima"))
    ]
    assert {line.split("|")[1].strip() for line in every} == {
        "CIFAR-10", "CIFAR-100", "Tiny-ImageNet", "ImageNet"
    }  # fmt: skip
    comixup = rows["CIFAR-100`preactresnet18``comixup`"]
    assert "80.19 (best epoch 80.36)" in comixup and "300, last" in comixup
    assert "`mixbench run --preset paper-comixup-cifar100`" in comixup
    (puzzle_imagenet,) = [
        line for line in every if line.startswith("| ImageNet") and "`puzzlemix`" in line
    ]
    assert "78.76" in puzzle_imagenet and "no mixbench preset" in puzzle_imagenet
    assert all(line.rstrip("| ").endswith("—") for line in every if line != ran)
    # Other data only: no reference section at all.
    synthetic = _records(
        "smoke", lambda c: 0.5, methods=["erm"], data={**DATA, "name": "synthetic"}
    )
    assert "## Paper reference" not in render_leaderboard(build_tables(synthetic), {})


# -- the committed pages equal what mixbench regenerates from the committed results ------------


def _regenerate(tmp_path: Path) -> Path:
    results = ROOT / "results"
    if not any(results.glob("*.jsonl")):
        pytest.fail("results/*.jsonl are missing: the published pages have no data behind them")
    out = tmp_path / "board"
    assert main(["leaderboard", "--from", str(results), "--out", str(out)]) == 0
    return out


def test_committed_leaderboard_is_what_mixbench_writes(tmp_path) -> None:
    out = _regenerate(tmp_path)
    committed = (ROOT / "LEADERBOARD.md").read_text(encoding="utf-8")
    assert (out / "LEADERBOARD.md").read_text(encoding="utf-8") == committed, (
        "LEADERBOARD.md differs from `mixbench leaderboard --from results/ --out .`"
    )
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots == sorted(p.name for p in (ROOT / "plots").glob("*.png"))
    for name in re.findall(r"\]\(plots/([^)]+)\)", committed):
        assert (ROOT / "plots" / name).is_file()


#: Each committed sweep page and the preset it is written from.
SWEEP_PAGES = {
    "multimix-sweep.md": "sweep-multimix",
    "multimix-sweep-long.md": "sweep-multimix-long",
}


@pytest.mark.parametrize("page", sorted(SWEEP_PAGES))
def test_committed_sweep_page_is_what_mixbench_writes(tmp_path, page) -> None:
    out = tmp_path / "sweep.md"
    args = ["sweep-table", "--from", str(ROOT / "results"), "--preset", SWEEP_PAGES[page]]
    assert main([*args, "--out", str(out)]) == 0
    committed = ROOT / "docs" / page
    assert out.read_text(encoding="utf-8") == committed.read_text(encoding="utf-8")


def test_every_published_sweep_page_is_checked() -> None:
    assert {p.name for p in (ROOT / "docs").glob("*sweep*.md")} == set(SWEEP_PAGES)


def test_copied_results_rebuild_the_same_leaderboard(tmp_path) -> None:
    """A fresh machine with only the committed results gets the same page (no store needed)."""
    copy = tmp_path / "results"
    shutil.copytree(ROOT / "results", copy)
    out = tmp_path / "board"
    assert main(["leaderboard", "--from", str(copy), "--out", str(out)]) == 0
    assert (out / "LEADERBOARD.md").read_text() == (ROOT / "LEADERBOARD.md").read_text()


def test_a_sweep_under_way_keeps_its_methods_apart_from_the_references() -> None:
    """A method with one finished setting so far is still a swept method, not a reference."""
    records = [
        r
        for r in _records("sweep-multimix", _sweep_top1)
        if r["method"] != "dense_multimix" or r["params"] == {**_dense_base()}
    ]
    (table,) = build_tables(records)
    page = render_sweep_page([table], "sweep-multimix")
    assert "| `dense_multimix` (base) " in page
    assert "`dense_multimix` (alpha" not in page
    assert page.index("`erm`") < page.index("`mixup`") < page.index("`dense_multimix`")


def _dense_base() -> dict:
    from mixbench.methods import get_method_class

    return dict(get_method_class("dense_multimix").param_sets["paper"])  # the sweep's base


def test_the_long_sweep_reads_every_setting_against_the_paper_default_over_seeds() -> None:
    """In the alpha x prob grid every value is as common as another: the base is the method's
    defaults (alpha 1, prob 0.5), and a setting with three seeds is read against its range."""
    top1 = {(1.0, 0.5): 0.73, (0.05, 0.5): 0.76, (0.01, 0.5): 0.732, (0.2, 0.5): 0.70}

    def by_setting(cell) -> float:
        p = cell.params
        return top1.get((p["alpha"], p["prob"]), 0.10) + 0.002 * cell.seed

    records = _records("sweep-multimix-long", by_setting, seeds=(0, 1, 2))
    (table,) = build_tables(records)
    rows = [r for r in table.rows if r.method == "multimix"]
    assert base_setting(rows, swept_parameters(table)) == {"alpha": "1.0", "prob": "0.5"}
    page = render_sweep_page([table], "sweep-multimix-long")
    lines = [line for line in page.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:6] == ["method", "alpha", "prob", "seeds", "top-1 (%)", "vs base over seeds"]
    cells = {c[0:3]: c[5] for c in (
        tuple(x.strip() for x in line.strip("|").split("|")) for line in lines[2:]
    )}  # fmt: skip
    assert cells[("`multimix` (base)", "1.0", "0.5")] == "—"
    assert cells[("`multimix`", "**0.05**", "0.5")] == "above"  # 76.0-76.4 against 73.0-73.4
    assert cells[("`multimix`", "**0.01**", "0.5")] == "overlaps"  # 73.2-73.6: the ranges overlap
    assert cells[("`multimix`", "**0.2**", "0.5")] == "below"
    # Fewer than two seeds on either side: no reading, and no column at all when none has one.
    one_seed = render_sweep_page(build_tables([r for r in records if r["seed"] == 0]), "x")
    assert "vs base over seeds |" not in one_seed


def _readme_long_reading() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("**The `long` table (")
    return readme[start : readme.index("\n- **[docs/", start)]


def test_the_readme_long_reading_quotes_the_leaderboard() -> None:
    """Every `mean ± std` the README's reading of the `long` table quotes stands in the
    leaderboard, and its cell count is the leaderboard's: the prose cannot drift from the data
    as cells land."""
    reading = _readme_long_reading()
    board = (ROOT / "LEADERBOARD.md").read_text(encoding="utf-8")
    quoted = re.findall(r"(\d+\.\d\d) ± (\d\.\d\d)", reading)
    assert len(quoted) >= 10
    missing = [f"{m} ± {s}" for m, s in quoted if f"{m} ± {s}" not in board]
    assert not missing, f"quoted in the README but in no leaderboard row: {missing}"
    done, planned = re.search(r"\((\d+) of (\d+) cells", reading).groups()
    cells = f"- cells: {done} of the {planned} that preset `long` plans"
    assert cells in board, f"the README's cell count ({done} of {planned}) is not the leaderboard's"
