"""torchvision and timm backbones as staged networks (``tv:<name>``, ``timm:<name>``), the ViT
track (its feature map, pooled embedding and attention) and every method on them."""

from __future__ import annotations

import copy
import importlib.util
import sqlite3
import time
from typing import Any

import pytest
import torch

from mixbench.cli import main
from mixbench.datasets import create_dataset
from mixbench.errors import UsageError
from mixbench.methods import get_method, list_methods
from mixbench.models import AdaptedNet, StagedNet, ViTNet, create_model, model_info

from .conftest import TINY, installed_methods

HAS_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(
    not HAS_TIMM, reason="timm is missing: pip install 'mixbench[timm]'"
)

#: A Vision Transformer for 32x32 images: patch 4 (an 8x8 grid), 2 blocks of width 32.
VIT = "timm:vit_tiny_patch16_224"
TINY_VIT: dict[str, Any] = {
    "img_size": 32, "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2,
}  # fmt: skip
VIT_AVG = {**TINY_VIT, "depth": 3, "global_pool": "avg"}

#: (model, options): one per supported family, each cheap at 32x32.
FAMILIES: list[tuple[str, dict[str, Any]]] = [
    ("tv:resnet18", {}),
    ("tv:wide_resnet50_2", {}),
    ("tv:resnext50_32x4d", {}),
    pytest.param("timm:resnet18", {}, marks=needs_timm),
    pytest.param("timm:convnext_atto", {}, marks=needs_timm),
    pytest.param(VIT, TINY_VIT, marks=needs_timm, id="vit-token"),
    pytest.param(VIT, VIT_AVG, marks=needs_timm, id="vit-avg"),
    pytest.param("timm:deit_tiny_patch16_224", TINY_VIT, marks=needs_timm, id="deit"),
]


def _images(b: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _bare(name: str, num_classes: int, options: dict[str, Any]) -> torch.nn.Module:
    """The library's own network, unwrapped."""
    prefix, _, arch = name.partition(":")
    if prefix == "tv":
        from torchvision.models import get_model

        return get_model(arch, weights=None, num_classes=num_classes)
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **options)


@pytest.mark.parametrize("name,options", FAMILIES)
def test_forward_equals_the_wrapped_network(name: str, options: dict) -> None:
    model = create_model(name, 7, seed=0, **options).eval()
    bare = _bare(name, 7, options).eval()
    bare.load_state_dict(model.net.state_dict())
    x = _images()
    with torch.no_grad():
        expected = bare(x)
        assert torch.equal(model(x), expected)
        # The staged path runs the same modules in the same order: equal logits at every cut.
        for k in range(model.num_stages + 1):
            assert torch.equal(model.forward_from(model.forward_to(x, k), k), expected), k
    # The wrapper adds no parameter: its parameters and state are the wrapped network's.
    assert {id(p) for p in model.parameters()} == {id(p) for p in model.net.parameters()}
    assert all(key.startswith("net.") for key in model.state_dict())
    assert isinstance(model, StagedNet) and isinstance(model, AdaptedNet)


@pytest.mark.parametrize("name,options", FAMILIES)
def test_cuts_have_the_staged_shapes(name: str, options: dict) -> None:
    model = create_model(name, 7, seed=0, **options).eval()
    x = _images()
    side = model.final_map_size(32)
    with torch.no_grad():
        feats, emb = model.features(x), model.embed(x)
    assert feats.shape == (2, model.embed_dim, side, side)
    assert emb.shape == (2, model.embed_dim)
    assert model.num_classes == 7 and model.num_stages >= 2
    if model.pools_feature_map:
        torch.testing.assert_close(model.pool(feats), emb, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.head(model.pool(feats)), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,options", FAMILIES[:1] + FAMILIES[-4:-2])
def test_a_deep_copy_is_independent(name: str, options: dict) -> None:
    model = create_model(name, 5, seed=0, **options).eval()
    clone = copy.deepcopy(model)
    x = _images()
    with torch.no_grad():
        before = model.forward_from(x, 0)
        clone.head.weight.add_(1.0)
        assert torch.equal(model.forward_from(x, 0), before)
        assert torch.equal(clone.forward_from(x, 0), clone(x))
        assert not torch.equal(clone(x), before)


def test_seeded_models_are_reproducible() -> None:
    a = create_model("tv:resnet18", 5, seed=3)
    b = create_model("tv:resnet18", 5, seed=3)
    c = create_model("tv:resnet18", 5, seed=4)
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)


# -- the ViT track ---------------------------------------------------------------------------


@needs_timm
@pytest.mark.parametrize("options", [TINY_VIT, VIT_AVG], ids=["token", "avg"])
def test_vit_feature_map_is_the_patch_grid_and_embed_what_the_head_reads(options: dict) -> None:
    model = create_model(VIT, 5, seed=0, **options).eval()
    net = model.net
    x = _images()
    with torch.no_grad():
        tokens = net.forward_features(x)  # (b, 1 + 64, d) after the final norm
        grid = model.features(x)
        assert isinstance(model, ViTNet) and model.prefix_tokens == 1
        assert grid.shape == (2, 32, 8, 8)
        assert torch.equal(grid.flatten(2).transpose(1, 2), tokens[:, 1:])  # no class token
        assert torch.equal(model.embed(x), net.forward_head(tokens, pre_logits=True))
        if options.get("global_pool") == "avg":
            assert model.pools_feature_map
            torch.testing.assert_close(model.pool(grid), net.fc_norm(tokens[:, 1:].mean(1)))
        else:
            assert not model.pools_feature_map
            torch.testing.assert_close(model.embed(x), tokens[:, 0])  # the class token
            with pytest.raises(UsageError, match="global_pool"):
                model.pool(grid)


@needs_timm
def test_vit_attention_is_the_class_tokens_in_the_last_block() -> None:
    model = create_model(VIT, 5, seed=0, **TINY_VIT).eval()
    x = _images()
    with torch.no_grad():
        logits, attention = model.forward_with_attention(x)
        plain = model(x)
        # The reference: timm's unfused attention, its softmax read at the dropout's input.
        attn = model.net.blocks[-1].attn
        attn.fused_attn = False
        seen: list[torch.Tensor] = []
        hook = attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(i[0]))
        expected_logits = model.net(x)
        hook.remove()
    assert torch.equal(logits, plain)  # the same forward pass, nothing added
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attention, seen[0][:, :, 0, 1:].mean(1), rtol=1e-5, atol=1e-6)
    assert attention.shape == (2, 64) and not attention.requires_grad
    assert (attention.sum(1) < 1).all()  # the class token's attention to itself is left out


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("tv:resnet18", {"weights": "DEFAULT"}, "never downloads weights"),
        ("tv:mobilenet_v3_small", {}, "supported: tv: ResNet"),
        ("tv:no_such_net", {}, "unknown torchvision model"),
        pytest.param("timm:resnet18", {"pretrained": True}, "never downloads", marks=needs_timm),
        pytest.param("timm:efficientnet_b0", {}, "supported: .*ConvNeXt", marks=needs_timm),
        pytest.param("timm:no_such_net", {}, "unknown timm model", marks=needs_timm),
        pytest.param("timm:resnet18", {"no_such_option": 1}, "no_such_option", marks=needs_timm),
        pytest.param(VIT, {"embed_dim": 64, "num_heads": 3}, "divisible", marks=needs_timm),
    ],
)
def test_bad_backbones_are_one_line_usage_errors(name: str, options: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match) as info:
        create_model(name, 5, **options)
    assert "\n" not in str(info.value)


def test_without_timm_a_timm_model_names_the_extra(monkeypatch) -> None:
    from mixbench.models import adapters

    real = importlib.util.find_spec
    monkeypatch.setattr(
        adapters.importlib.util, "find_spec", lambda n, *a: None if n == "timm" else real(n, *a)
    )
    with pytest.raises(UsageError, match=r"pip install 'mixbench\[timm\]'"):
        create_model("timm:resnet18", 5)


def test_the_engine_refuses_a_method_that_cannot_train_the_model(tmp_path) -> None:
    from mixbench.bench.perf.data import bench_cell
    from mixbench.bench.train.engine import train_cell

    cell = bench_cell(device="cpu", method="transmix", batch_size=8, steps_per_epoch=1,
                      width=4, image_size=32, num_classes=4)  # fmt: skip
    with pytest.raises(UsageError, match="'transmix' cannot train model 'preactresnet18'"):
        train_cell(cell, tmp_path / "cell")
    assert not list((tmp_path / "cell").glob("checkpoint_*"))


@needs_timm
def test_an_unsupported_family_exits_2_with_one_line(tmp_path, capsys) -> None:
    argv = ["run", "--preset", "smoke", "--methods", "erm", "--dry-run", "--models"]
    assert main([*argv, "timm:efficientnet_b0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ResNet, ConvNeXt, ViT/DeiT" in err
    assert "Traceback" not in err


@needs_timm
def test_options_pass_through_from_the_command_line(capsys) -> None:
    argv = ["run", "--preset", "smoke", "--methods", "erm,transmix", "--dry-run"]
    key = f"model_options.{VIT}"
    sets = [f"--set={key}.{k}={v}" for k, v in TINY_VIT.items()]
    assert main([*argv, "--models", VIT, *sets]) == 0
    out = capsys.readouterr().out
    assert "2 cells" in out and "transmix" in out
    # Without img_size=32 the ViT takes 224x224 images: refused before training.
    assert main([*argv, "--models", VIT]) == 2
    assert "img_size" in capsys.readouterr().err


def test_models_lists_the_builtins_and_how_to_name_others(capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "preactresnet18" in out and "tv:<name>" in out and "timm:<name>" in out
    assert main(["models", "--json"]) == 0
    import json

    infos = json.loads(capsys.readouterr().out)
    assert {i["name"]: i["options"] for i in infos}["wrn16_8"] == {
        "depth": 16,
        "widen": 8,
        "dropout": 0.0,
    }
    assert model_info("tv:resnet18")["options"] == {}


# -- every method on every family --------------------------------------------------------------

#: The four backbones of the issue, at their cheapest: the ViT at 32x32, patch 8, width 32.
FOUR = [
    ("tv:resnet18", {}),
    pytest.param("timm:resnet18", {}, marks=needs_timm),
    pytest.param("timm:convnext_atto", {}, marks=needs_timm),
    pytest.param(VIT, {**VIT_AVG, "patch_size": 8}, marks=needs_timm, id="vit"),
]


@pytest.mark.parametrize("name,options", FOUR)
def test_every_method_trains_one_epoch_of_synthetic(name: str, options: dict) -> None:
    """One epoch (16 images, two steps of 8) of every installed method on each backbone; a
    method that declares it cannot train the model (``supports``) is not run."""
    data = create_dataset("synthetic", None, n_train=16, n_test=8)
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    images = (data.train.images.float() / 255 - mean) / std
    labels = data.train.labels
    start = time.perf_counter()
    trained, refused = [], []
    for method_name in installed_methods():
        model = create_model(name, data.num_classes, seed=0, **options).train()
        method = get_method(method_name)
        method.bind_data(data.mean, data.std)
        if method.supports(model) is not None:
            refused.append(method_name)
            continue
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        for step in range(2):
            optimizer.zero_grad()
            rows = slice(8 * step, 8 * step + 8)
            loss = method.loss(model, images[rows], labels[rows])
            assert torch.isfinite(loss), (method_name, step)
            loss.backward()
            optimizer.step()
        trained.append(method_name)
    # Every method trains the ViT (it pools by the mean of its patch tokens, so the methods
    # that pool a mixed feature map run too); every method but TransMix trains the CNNs.
    expected_refused = [] if name == VIT else ["transmix"]
    assert refused == [m for m in expected_refused if m in installed_methods()]
    assert trained + refused == installed_methods() or sorted(trained + refused) == sorted(
        installed_methods()
    )
    print(f"{name}: {len(trained)} methods in {time.perf_counter() - start:.1f} s")


def test_methods_declare_what_they_cannot_train() -> None:
    cnn = create_model("preactresnet18", 5, width=4)
    refused = {m: get_method(m).supports(cnn) for m in list_methods()}
    assert {m for m, r in refused.items() if r} == {"transmix"}
    assert "Vision Transformer" in refused["transmix"]


# -- the ViT preset --------------------------------------------------------------------------


@pytest.mark.slow
@needs_timm
def test_smoke_vit_runs_every_method_that_supports_the_vit_to_a_leaderboard(tmp_path, capsys):
    out = tmp_path / "vit"
    assert main(["run", "--preset", "smoke-vit", "--out", str(out), *TINY]) == 0
    con = sqlite3.connect(out / "results.db")
    try:
        rows = con.execute("SELECT method, status, model FROM cells").fetchall()
    finally:
        con.close()
    from mixbench.config import load_preset

    matrix_model = create_model(VIT, 10, **load_preset("smoke-vit").model_options[VIT])
    supported = [m for m in installed_methods() if get_method(m).supports(matrix_model) is None]
    assert "transmix" in supported and "alignmixup" not in supported
    assert sorted(m for m, _, _ in rows) == sorted(supported)
    assert all(status == "done" and model == VIT for _, status, model in rows)
    board = (out / "LEADERBOARD.md").read_text()
    for name in supported:
        assert f"| `{name}`" in board
    err = capsys.readouterr().err
    assert f"skipping method 'alignmixup' on model '{VIT}'" in err
    assert f"skipping method 'multimix' on model '{VIT}'" in err


@needs_timm
def test_methods_that_pool_a_mixed_map_refuse_a_vit_that_reads_its_class_token() -> None:
    token = create_model(VIT, 5, **TINY_VIT)
    avg = create_model(VIT, 5, **VIT_AVG)
    refused = {m for m in list_methods() if get_method(m).supports(token)}
    assert refused == {"alignmixup", "multimix"}
    assert "class token" in get_method("alignmixup").supports(token)
    # Dense MultiMix pools only for its clean term; input mixup only (align_prob 0) pools none.
    assert get_method("dense_multimix", clean_weight=1.0).supports(token)
    assert get_method("alignmixup", align_prob=0.0).supports(token) is None
    assert not {m for m in list_methods() if get_method(m).supports(avg)}
