"""Every derived seed comes from mixbench.seeding, and its formulas stay what results were
computed with (a change here would change every stored number, so it must be deliberate)."""

from __future__ import annotations

import ast

from mixbench import seeding

from .conftest import ROOT


def test_seed_formulas_are_fixed():
    assert seeding.epoch_seed(3, 7) == 3 * 1_000_003 + 7
    assert seeding.global_seed(3, 7, rank=1) == (3 * 1_000_003 + 7) * 131 + 1
    assert seeding.method_seed(2, 1, "cpu") == 2 * 1_000_003 + 10_007
    assert seeding.method_seed(2, 1, "cuda") == 2 * 1_000_003 + 10_007 + 7919
    assert seeding.trial_seed(5, 2) == (5 * 1_000_003 + 2) % 2**31
    assert seeding.split_seed(4, "train") == 4 and seeding.split_seed(4, "test") == 1_000_007
    assert seeding.purpose_seed(0, "attack") == 1_203_776_827  # zlib.crc32(b"attack")
    assert seeding.derive_seed(1, "a") == seeding.derive_seed(1, "a") < 2**63
    assert seeding.derive_seed(1, "a") != seeding.derive_seed(1, "b")


def test_streams_of_one_seed_are_distinct():
    seeds = {seeding.epoch_seed(0, e) for e in range(1, 50)}
    seeds |= {seeding.purpose_seed(0, p) for p in ("attack", "pgd", "embedding", "ood")}
    assert len(seeds) == 53


def test_no_module_mixes_seeds_by_hand():
    """The multipliers of the seed formulas appear in mixbench.seeding only."""
    for path in (ROOT / "mixbench").rglob("*.py"):
        if path.name == "seeding.py":
            continue
        numbers = {
            node.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, int)
        }
        assert not numbers & {1_000_003, 10_007, 2_654_435_761}, path
