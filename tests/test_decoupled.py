"""Decoupled mixup: ``decoupled_mix_loss``, the ``loss="decoupled"`` option of the two-label
methods, the ``decouplemix`` method, and the key-neutral declaration of options added to
methods that already have stored cells (``Param(key_default=True)``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mixbench.bench.run.cells import build_cells, key_defaults
from mixbench.config import CellConfig, apply_setting, from_dict, load_preset, to_dict
from mixbench.leaderboard import build_tables
from mixbench.leaderboard.markdown import method_label
from mixbench.methods import functional as fn
from mixbench.methods import get_method, get_method_class

from .records import finished_record
from .test_methods import batch, coin, make, stream, tiny_net

ROOT = Path(__file__).resolve().parent.parent

#: The two-label methods and parameters that force their mixing branch.
TWO_LABEL_METHODS = {
    "mixup": {},
    "cutmix": {"prob": 1.0},
    "manifold_mixup": {},
    "alignmixup": {},
    "saliencymix": {"prob": 1.0},
    "puzzlemix": {"block_nums": (4,)},
    "regmixup": {},
    "mixupe": {},
    "guidedmixup": {"prob": 1.0},
}


def soft_ce(logits, a, b, lam):
    lam = torch.as_tensor(lam, dtype=torch.float32).reshape(-1, 1)
    target = lam * F.one_hot(a, logits.shape[1]) + (1 - lam) * F.one_hot(b, logits.shape[1])
    return -(target * torch.log_softmax(logits, 1)).sum(1).mean()


def dec(logits, a, b):
    """-log_softmax of z with z_b set to -inf, read at a (one row each)."""
    z = logits.clone()
    z[torch.arange(len(a)), b] = -torch.inf
    return -torch.log_softmax(z, 1)[torch.arange(len(a)), a]


def rows(b=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, generator=g) * 3
    a = torch.arange(b) % c
    return logits, a, (a + 1 + torch.arange(b) % (c - 1)) % c  # b != a on every row


# -- the function ------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.3, 0.8, torch.tensor([0.1, 0.2, 0.6, 0.7, 0.9, 0.4])])
def test_eta_zero_is_the_soft_target_cross_entropy(lam) -> None:
    logits, a, b = rows()
    for mode in ("both", "less", "more"):
        got = fn.decoupled_mix_loss(logits, a, b, lam, 0.0, mode)
        torch.testing.assert_close(got, soft_ce(logits, a, b, lam))


def test_same_label_rows_get_plain_cross_entropy() -> None:
    logits, a, _ = rows()
    got = fn.decoupled_mix_loss(logits, a, a, 0.3, 1.0)
    torch.testing.assert_close(got, F.cross_entropy(logits, a))
    z = logits.clone().requires_grad_()
    fn.decoupled_mix_loss(z, a, a, 0.3, 1.0).backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("lam", [0.3, 0.7])
@pytest.mark.parametrize("power", [0.0, 0.5, 1.0, 2.0])
def test_terms_are_dec_read_at_the_own_class_with_their_own_weights(lam, power) -> None:
    logits, a, b = rows()
    eta = 0.4
    ce = soft_ce(logits, a, b, lam)
    w_a, w_b = eta * lam**power, eta * (1 - lam) ** power
    term_a, term_b = w_a * dec(logits, a, b).mean(), w_b * dec(logits, b, a).mean()
    both = fn.decoupled_mix_loss(logits, a, b, lam, eta, "both", power)
    torch.testing.assert_close(both, ce + term_a + term_b)
    less = fn.decoupled_mix_loss(logits, a, b, lam, eta, "less", power)
    more = fn.decoupled_mix_loss(logits, a, b, lam, eta, "more", power)
    # "less": the term of the smaller component (a where lam < 0.5), "more" the other one.
    smaller, larger = (term_a, term_b) if lam < 0.5 else (term_b, term_a)
    torch.testing.assert_close(less, ce + smaller)
    torch.testing.assert_close(more, ce + larger)


def test_power_zero_gives_flat_weights() -> None:
    logits, a, b = rows()
    for lam in (0.2, 0.9):
        flat = fn.decoupled_mix_loss(logits, a, b, lam, 0.1, power=0.0)
        expected = soft_ce(logits, a, b, lam) + 0.1 * (dec(logits, a, b) + dec(logits, b, a)).mean()
        torch.testing.assert_close(flat, expected)


@pytest.mark.parametrize("lam", [0.5, 0.9995, 0.0005, 1.0, 0.0])
def test_equal_and_nearly_one_hot_weights_add_nothing(lam) -> None:
    logits, a, b = rows()
    got = fn.decoupled_mix_loss(logits, a, b, lam, 1.0)
    torch.testing.assert_close(got, soft_ce(logits, a, b, lam))


def test_per_example_lam_matches_a_row_loop() -> None:
    logits, a, b = rows(b=8)
    a[0] = b[0]  # one same-label row
    lam = torch.tensor([0.3, 0.5, 0.9995, 0.1, 0.6, 0.75, 0.45, 0.2])
    for mode, power in [("both", 1.0), ("less", 0.5), ("more", 0.0)]:
        got = fn.decoupled_mix_loss(logits, a, b, lam, 0.2, mode, power)
        loop = torch.stack(
            [
                fn.decoupled_mix_loss(
                    logits[i : i + 1], a[i : i + 1], b[i : i + 1], float(lam[i]), 0.2, mode, power
                )
                for i in range(8)
            ]
        ).mean()
        torch.testing.assert_close(got, loop)


def test_finite_for_saturated_logits() -> None:
    logits, a, b = rows()
    z = (logits * 1e4).requires_grad_()
    for mode in ("both", "less", "more"):
        loss = fn.decoupled_mix_loss(z, a, b, torch.rand(6), 0.1, mode)
        assert torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(grad).all()


def test_bad_mode_and_shapes_are_refused() -> None:
    logits, a, b = rows()
    with pytest.raises(ValueError, match="mode"):
        fn.decoupled_mix_loss(logits, a, b, 0.3, 0.1, "most")
    with pytest.raises(ValueError, match="lam"):
        fn.decoupled_mix_loss(logits, a, b, torch.rand(3), 0.1)


def test_bfloat16_logits_give_float32() -> None:
    logits, a, b = rows()
    got = fn.decoupled_mix_loss(logits.bfloat16(), a, b, 0.3, 0.1)
    assert got.dtype == torch.float32


# -- the methods ---------------------------------------------------------------------------------


def test_decouplemix_equation_and_paper_set() -> None:
    model, (images, labels) = tiny_net(), batch()
    paper = get_method_class("decouplemix").param_sets["paper"]
    assert paper == {"alpha": 0.2, "eta": 0.01, "mode": "more", "power": 0.5}
    for params in ({}, paper):
        p = {"alpha": 1.0, "eta": 0.1, "mode": "both", "power": 1.0, **params}
        for seed in range(4):
            method = make("decouplemix", params, seed)
            g = stream(method)
            lam = float(fn.sample_beta(p["alpha"], g))
            perm = torch.randperm(8, generator=g)
            logits = model(lam * images + (1 - lam) * images[perm])
            expected = fn.decoupled_mix_loss(
                logits, labels, labels[perm], lam, p["eta"], p["mode"], p["power"]
            )
            torch.testing.assert_close(method.loss(model, images, labels), expected)


def test_decouplemix_is_mixup_with_the_decoupled_loss() -> None:
    model, (images, labels) = tiny_net(), batch()
    for seed in range(3):
        ours = make("decouplemix", {"alpha": 0.5, "eta": 0.3, "mode": "less", "power": 0.5}, seed)
        option = make(
            "mixup",
            {"alpha": 0.5, "loss": "decoupled", "dm_eta": 0.3, "dm_mode": "less", "dm_power": 0.5},
            seed,
        )
        torch.testing.assert_close(
            ours.loss(model, images, labels), option.loss(model, images, labels), rtol=0, atol=0
        )


def test_mixup_and_cutmix_decoupled_equations() -> None:
    model, (images, labels) = tiny_net(), batch()
    dm = {"loss": "decoupled", "dm_eta": 0.5, "dm_mode": "both", "dm_power": 1.0}
    for seed in range(4):
        method = make("mixup", dm, seed)
        g = stream(method)
        lam = float(fn.sample_beta(1.0, g))
        perm = torch.randperm(8, generator=g)
        logits = model(lam * images + (1 - lam) * images[perm])
        expected = fn.decoupled_mix_loss(logits, labels, labels[perm], lam, 0.5)
        torch.testing.assert_close(method.loss(model, images, labels), expected)

        method = make("cutmix", {**dm, "prob": 1.0, "dm_mode": "less"}, seed)
        g = stream(method)
        assert coin(g) < 1.0
        lam = float(fn.sample_beta(1.0, g))
        box, lam = fn.cutmix_box(32, 32, lam, g)
        perm = torch.randperm(8, generator=g)
        logits = model(fn.paste_box(images, box, perm))
        expected = fn.decoupled_mix_loss(logits, labels, labels[perm], lam, 0.5, "less")
        torch.testing.assert_close(method.loss(model, images, labels), expected)


def test_manifold_mixup_and_alignmixup_decoupled_equations() -> None:
    model, (images, labels) = tiny_net(), batch()
    dm = {"loss": "decoupled", "dm_eta": 0.2, "dm_mode": "more", "dm_power": 0.5}
    for seed in range(4):
        method = make("manifold_mixup", dm, seed)
        g = stream(method)
        k = (0, 1, 2)[int(torch.randint(3, (1,), generator=g))]
        lam = float(fn.sample_beta(2.0, g))
        perm = torch.randperm(8, generator=g)
        hidden = model.forward_to(images, k)
        logits = model.forward_from(lam * hidden + (1 - lam) * hidden[perm], k)
        expected = fn.decoupled_mix_loss(logits, labels, labels[perm], lam, 0.2, "more", 0.5)
        torch.testing.assert_close(method.loss(model, images, labels), expected)

        method = make("alignmixup", {**dm, "align_prob": 0.0}, seed)  # the input branch
        g = stream(method)
        coin(g)
        lam = float(fn.sample_beta(2.0, g))
        perm = torch.randperm(8, generator=g)
        logits = model(lam * images + (1 - lam) * images[perm])
        expected = fn.decoupled_mix_loss(logits, labels, labels[perm], lam, 0.2, "more", 0.5)
        torch.testing.assert_close(method.loss(model, images, labels), expected)


@pytest.mark.parametrize("name", sorted(TWO_LABEL_METHODS))
def test_the_option_with_eta_zero_is_the_methods_cross_entropy_loss(name: str) -> None:
    """Every two-label method accepts the option; with ``dm_eta = 0`` it is the soft-target
    cross-entropy of the same draws (the method's "ce" loss)."""
    params = TWO_LABEL_METHODS[name]
    images, labels = batch()
    differs = []
    for seed in range(3):
        ce = make(name, params, seed).loss(tiny_net(), images, labels)
        zero = make(name, {**params, "loss": "decoupled", "dm_eta": 0.0}, seed)
        torch.testing.assert_close(zero.loss(tiny_net(), images, labels), ce)
        some = make(name, {**params, "loss": "decoupled", "dm_eta": 1.0}, seed)
        # (a draw with nearly one-hot weights adds no term: PuzzleMix's seed 1 here)
        differs.append(some.loss(tiny_net(), images, labels).item() != pytest.approx(ce.item()))
    assert any(differs)


def test_methods_with_other_targets_have_no_loss_option() -> None:
    for name in ("erm", "multimix", "dense_multimix"):
        assert "loss" not in get_method_class(name).params
    assert get_method_class("comixup").params["loss"].choices == ("ce", "bce")


# -- keys: an option added to a method keeps its stored cells' keys ------------------------------


def test_the_committed_cells_keep_their_keys() -> None:
    text = (ROOT / "results" / "short-cifar10.jsonl").read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert records
    # Each record's key is the hash of its stored config, as the store computes it ...
    for rec in records:
        assert from_dict(CellConfig, rec["config"]).key == rec["key"]
    # ... and the cells mixbench builds today for that run are the same cells.
    matrix = load_preset("short")
    apply_setting(matrix, "dataset_options.imagefolder.name=CIFAR-10")
    cells = {c.key: c for c in build_cells(matrix)}
    assert {r["key"] for r in records} <= set(cells)
    mixup = next(c for c in cells.values() if c.method == "mixup")
    assert mixup.params == {**get_method("mixup").hparams}  # the full resolved parameters
    assert mixup.keyed_params() == {"alpha": 1.0}
    manifold = next(c for c in cells.values() if c.method == "manifold_mixup")
    assert manifold.keyed_params()["loss"] == "ce"  # keyed: stored cells hold it


def test_setting_the_option_gives_a_new_key() -> None:
    matrix = load_preset("smoke")
    matrix.methods = ["mixup", "manifold_mixup"]
    before = {c.method: c for c in build_cells(matrix)}
    matrix.method_params = {
        "mixup": {"loss": "decoupled"},
        "manifold_mixup": {"dm_eta": 0.5},  # an option parameter away from its default
    }
    after = {c.method: c for c in build_cells(matrix)}
    assert after["mixup"].key != before["mixup"].key
    assert after["mixup"].keyed_params() == {"alpha": 1.0, "loss": "decoupled"}
    assert after["manifold_mixup"].key != before["manifold_mixup"].key
    # Naming a default explicitly is the default cell.
    matrix.method_params = {"mixup": {"loss": "ce", "dm_power": 1.0}}
    assert build_cells(matrix)[0].key == before["mixup"].key
    # A stored config round-trips, key included.
    cell = after["mixup"]
    assert from_dict(CellConfig, to_dict(cell)).key == cell.key


def test_key_defaults_are_the_declared_key_neutral_parameters() -> None:
    assert key_defaults(get_method_class("mixup")) == {
        "loss": "ce", "dm_eta": 0.1, "dm_mode": "both", "dm_power": 1.0
    }  # fmt: skip
    assert set(key_defaults(get_method_class("puzzlemix"))) == {"dm_eta", "dm_mode", "dm_power"}
    assert key_defaults(get_method_class("erm")) == {}


def test_tuning_setup_ignores_options_at_their_defaults() -> None:
    from mixbench.bench.tuning.study import tuning_setup

    matrix = load_preset("smoke")
    matrix.methods = ["mixup"]
    cell = build_cells(matrix)[0]
    assert tuning_setup(cell, {})["fixed_params"] == {"alpha": 1.0}


def _record(cell: CellConfig, top1: float) -> dict:
    return finished_record(cell, top1)


def test_the_leaderboard_pools_old_and_new_default_cells_and_shows_the_option() -> None:
    matrix = load_preset("smoke")
    matrix.methods = ["mixup"]
    matrix.seeds = [0, 1]
    new, other_seed = build_cells(matrix)
    old = _record(new, 0.8)  # a cell stored before the option existed
    old["params"] = {"alpha": 1.0}
    old["config"]["params"] = {"alpha": 1.0}
    del old["config"]["key_defaults"]
    assert from_dict(CellConfig, old["config"]).key == new.key
    matrix.seeds = [0]
    matrix.method_params = {"mixup": {"loss": "decoupled", "dm_mode": "less"}}
    (decoupled,) = build_cells(matrix)
    (table,) = build_tables([old, _record(other_seed, 0.82), _record(decoupled, 0.7)])
    rows = {method_label(r): (r.params, r.seeds) for r in table.rows}
    assert rows == {
        # one row: the old cell and a new one of the same setting
        "`mixup`": ({"alpha": 1.0}, [0, 1]),
        "`mixup` [dm_mode=less, loss=decoupled]": (
            {"alpha": 1.0, "dm_mode": "less", "loss": "decoupled"},
            [0],
        ),
    }
