"""Provenance stored with each cell: source commit (and whether it was modified), hardware."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mixbench.bench.run.provenance import hardware, software_versions, source_commit


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.org")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "a.txt").write_text("one\n")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def test_source_commit_names_head_and_tracks_modifications(repo: Path) -> None:
    head = _git(repo, "rev-parse", "HEAD")
    assert source_commit(repo) == (head, False)
    (repo / "untracked.txt").write_text("not part of the source\n")
    assert source_commit(repo) == (head, False)
    (repo / "a.txt").write_text("two\n")
    assert source_commit(repo) == (head, True)


def test_source_commit_outside_a_checkout_is_unknown(tmp_path: Path) -> None:
    assert source_commit(tmp_path) == (None, None)


def test_versions_carry_hardware() -> None:
    versions = software_versions()
    assert versions["hardware"] == hardware()
    assert versions["hardware"]["cpus"] >= 1
    assert isinstance(versions["hardware"]["cpu"], str) and versions["hardware"]["cpu"]
    assert {"mixbench", "torch", "ignite", "commit", "dirty"} <= set(versions)
