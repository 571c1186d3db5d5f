"""What a new user meets first: plugins by name, plain output off a terminal, clear notes, help
text, and a test suite that cannot hang."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mixbench.bench.train.engine import InterruptNoiseFilter
from mixbench.cli import main
from mixbench.plugins import PLUGINS_ENV, load_plugin

from .conftest import ROOT, TINY, run_cli

INPUT_NOISE = textwrap.dedent(
    '''
    """The README's example method: Gaussian noise on the inputs."""
    import torch
    import torch.nn.functional as F

    from mixbench.methods import MixMethod, Param, register_method


    @register_method("input_noise")
    class InputNoise(MixMethod):
        """Gaussian input noise: a toy regulariser to show the method interface."""

        description = "Gaussian noise on the inputs (a toy example)"
        paper = "none"
        params = {"sigma": Param(0.1, float, "noise standard deviation", minimum=0.0)}

        def loss(self, model, images, labels):
            gen = self.generator(images.device)
            noise = torch.randn(images.shape, generator=gen, device=images.device)
            logits = model(images + self.sigma * noise.to(images.dtype))
            return F.cross_entropy(logits, labels)
    '''
)


@pytest.mark.slow
def test_readme_plugin_example_runs_as_written(tmp_path):
    """`mixbench run --plugin input_noise` from the folder that holds input_noise.py, as the
    README says; the method trains, is stored and reaches the leaderboard."""
    (tmp_path / "input_noise.py").write_text(INPUT_NOISE)
    env = {PLUGINS_ENV: ""}
    proc = run_cli(
        "run", "--plugin", "input_noise", "--methods", "input_noise,erm",
        "--param", "input_noise.sigma=0.2", *TINY, "--out", str(tmp_path / "run"),
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    board = (tmp_path / "run" / "LEADERBOARD.md").read_text()
    assert "| `input_noise` [sigma=0.2] | sigma=0.2 " in board


def test_plugin_by_path_and_by_environment(tmp_path, monkeypatch, capsys):
    path = tmp_path / "noise_plugin.py"
    path.write_text(INPUT_NOISE.replace('"input_noise"', '"input_noise_by_path"'))
    monkeypatch.setenv(PLUGINS_ENV, "")
    assert main(["methods", "--json", "--plugin", str(path)]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)]
    assert "input_noise_by_path" in names
    # The option is exported to the environment, so processes mixbench starts load it too.
    assert os.environ[PLUGINS_ENV] == str(path.resolve())

    env_path = tmp_path / "env_plugin.py"
    env_path.write_text(INPUT_NOISE.replace('"input_noise"', '"input_noise_by_env"'))
    listed = run_cli("methods", "--json", env={PLUGINS_ENV: str(env_path)})
    assert listed.returncode == 0, listed.stderr
    assert "input_noise_by_env" in [m["name"] for m in json.loads(listed.stdout)]


def test_unknown_method_says_how_to_load_a_plugin(capsys):
    assert main(["run", "--dry-run", "--methods", "input_noisy"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'input_noisy'" in err and "--plugin MODULE" in err
    assert err.count("\n") == 1


def test_a_broken_plugin_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(PLUGINS_ENV, "")
    bad = tmp_path / "broken_plugin.py"
    bad.write_text("raise RuntimeError('half-written plugin')\n")
    assert main(["methods", "--plugin", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "cannot load plugin" in err and "half-written plugin" in err and err.count("\n") == 1
    assert os.environ[PLUGINS_ENV] == ""  # a plugin that failed is not passed on
    with pytest.raises(Exception, match="does not exist"):
        load_plugin(str(tmp_path / "missing.py"))


def test_pattern_matching_no_method_names_the_pattern(capsys):
    assert main(["run", "--dry-run", "--methods", "foo*"]) == 2
    err = capsys.readouterr().err
    assert "no registered method matches the pattern 'foo*'" in err and "erm" in err


def test_param_of_a_method_outside_the_matrix_is_reported(capsys):
    assert main(["run", "--dry-run", "--methods", "erm", "--param", "mixup.alpha=0.2"]) == 0
    err = capsys.readouterr().err
    assert "--param mixup.alpha=0.2 has no effect" in err and "'mixup' is not in the matrix" in err
    assert main(["run", "--dry-run", "--methods", "mixup", "--param", "mixup.alpha=0.2"]) == 0
    assert "no effect" not in capsys.readouterr().err


def test_dry_run_refuses_the_model_data_mismatch_a_real_run_refuses(capsys):
    assert main(["run", "--dry-run", "--methods", "erm", "--models", "resnet50"]) == 2
    err = capsys.readouterr().err
    assert "'resnet50' needs images of at least 64x64" in err and "32x32" in err
    # Where the options make the images large enough, the dry run lists the cells.
    ok = ["--set", "dataset_options.synthetic.image_size=64"]
    assert main(["run", "--dry-run", "--methods", "erm", "--models", "resnet50", *ok]) == 0


def test_help_shows_no_restructuredtext_markup():
    for argv in (["--help"], ["run", "--help"], ["evaluate", "--help"], ["tune", "--help"]):
        proc = run_cli(*argv)
        assert proc.returncode == 0 and "``" not in proc.stdout, (argv, proc.stdout[:300])


def test_status_json_into_a_closed_pipe_ends_quietly(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--methods", "erm", *TINY, "--out", str(out), "--no-leaderboard"]) == 0
    # `true` has exited long before mixbench (which imports torch first) writes a byte.
    status = f"{sys.executable} -m mixbench status --json --out {out}"
    command = status + " | true; echo rc=${PIPESTATUS[0]}"
    proc = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert "rc=1" in proc.stdout


def test_progress_off_a_terminal_is_one_line_per_epoch(tmp_path):
    """Under CI or a log file: no carriage-return bars, one plain line per epoch."""
    args = [a for a in TINY if a != "--no-progress"]
    proc = run_cli("run", "--methods", "erm", *args, "--epochs", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "test top-1" in lines[-1]


def test_ctrl_c_leaves_no_empty_engine_error_line():
    keep = InterruptNoiseFilter()

    def record(text: str) -> logging.LogRecord:
        return logging.LogRecord("ignite", logging.ERROR, __file__, 1, text, None, None)

    assert not keep.filter(record("Engine run is terminating due to exception: "))
    assert not keep.filter(record("Engine run is terminating due to exception: signal 15"))
    assert keep.filter(record("Engine run is terminating due to exception: CUDA out of memory"))
    assert keep.filter(record("something else"))


def test_evaluate_prints_percentages_like_the_leaderboard():
    from mixbench.commands.evaluate import format_value, is_percentage

    assert is_percentage("top1") and is_percentage("pgd_top1") and is_percentage("ece")
    assert not is_percentage("nll") and not is_percentage("alignment")
    assert format_value("top1", 0.7876) == "78.76 %"
    assert format_value("nll", 0.7876) == "0.7876"


@pytest.mark.skipif(sys.platform != "linux", reason="the dump check reads Linux output")
def test_a_hung_test_ends_the_run_with_a_stack_dump(tmp_path):
    """The project's pytest settings end a run whose test hangs (here: in a sleep) with a
    stack dump and a failure, instead of leaving CI waiting; only the timeout is shortened."""
    (tmp_path / "test_hang.py").write_text(
        "import time\n\ndef test_hangs():\n    time.sleep(120)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"),
         "--rootdir", str(tmp_path), "-o", "timeout=3", "-p", "no:cacheprovider",
         str(tmp_path / "test_hang.py")],
        capture_output=True, text=True, timeout=100, cwd=tmp_path,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Timeout" in output and "test_hangs" in output and "time.sleep" in output, output


def test_decoding_progress_counts_every_image_once(tmp_path, monkeypatch):
    """The one-time decode of an image folder counts 1..N (it showed 49999/9999 before)."""
    from torchvision.io import write_jpeg

    from mixbench.datasets import folder

    paths = []
    for i in range(5):
        path = tmp_path / f"{i}.jpg"
        write_jpeg(torch.full((3, 8, 8), 40 * i, dtype=torch.uint8), str(path))
        paths.append(str(path))
    seen = {}

    class Recording(folder.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": False})  # as on a terminal

        def close(self):
            seen.update(total=self.total, n=self.n)
            super().close()

    monkeypatch.setattr(folder, "tqdm", Recording)
    images = folder.decode_all(paths, None, "decoding test")
    assert images.shape == (5, 3, 8, 8)
    assert seen == {"total": 5, "n": 5}
