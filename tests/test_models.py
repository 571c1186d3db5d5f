"""Conformance tests of the staged backbones, run over every registered model (timm style)."""

from __future__ import annotations

import copy

import pytest
import torch

from mixbench.errors import UnknownNameError, UsageError
from mixbench.models import (
    MODELS,
    StagedNet,
    create_model,
    list_models,
    model_info,
    register_model,
)

NUM_CLASSES = 10
BATCH = 2
_CACHE: dict[str, StagedNet] = {}


def _model(name: str) -> StagedNet:
    """One shared, eval-mode instance per model (building resnet50 takes a second or two)."""
    if name not in _CACHE:
        _CACHE[name] = create_model(name, NUM_CLASSES, seed=0).eval()
    return _CACHE[name]


def _images(model: StagedNet, batch: int = BATCH, size: int | None = None) -> torch.Tensor:
    side = size or max(model.min_input_size, 32)
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, side, side, generator=g)


@pytest.mark.parametrize("name", list_models())
def test_output_shapes(name: str) -> None:
    model = _model(name)
    x = _images(model)
    side = model.final_map_size(x.shape[-1])
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
        emb = model.embed(x)
    assert isinstance(model, StagedNet)
    assert model.num_classes == NUM_CLASSES
    assert model.embed_dim == model.head.in_features
    assert logits.shape == (BATCH, NUM_CLASSES)
    assert feats.shape == (BATCH, model.embed_dim, side, side)
    assert emb.shape == (BATCH, model.embed_dim)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list_models())
def test_forward_from_forward_to_is_forward(name: str) -> None:
    model = _model(name)
    x = _images(model)
    with torch.no_grad():
        expected = model(x)
        assert model.forward_to(x, 0) is x
        for k in range(model.num_stages + 1):
            h = model.forward_to(x, k)
            h_before = h.clone()
            out = model.forward_from(h, k)
            assert torch.equal(out, expected), f"stage {k}"
            assert torch.equal(h, h_before), f"forward_from changed its input at stage {k}"
        assert torch.equal(model.forward_to(x, model.num_stages), model.features(x))


@pytest.mark.parametrize("name", list_models())
def test_features_pool_embed_head_are_consistent(name: str) -> None:
    model = _model(name)
    x = _images(model)
    with torch.no_grad():
        feats = model.features(x)
        pooled = model.pool(feats)
        assert torch.allclose(pooled, feats.mean(dim=(2, 3)))
        assert torch.equal(model.embed(x), pooled)
        assert torch.equal(model.head(pooled), model(x))


@pytest.mark.parametrize("name", list_models())
def test_channels_last_gives_the_same_logits(name: str) -> None:
    model = _model(name)
    x = _images(model)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = model(x)
        got = cl_model(x.contiguous(memory_format=torch.channels_last))
        hidden = cl_model.forward_to(x.contiguous(memory_format=torch.channels_last), 1)
        from_hidden = cl_model.forward_from(hidden, 1)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.allclose(from_hidden, got, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list_models())
def test_runs_under_autocast(name: str) -> None:
    model = _model(name)
    x = _images(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        feats = model.features(x)
        emb = model.pool(feats)
    with torch.no_grad():
        reference = model(x)
    assert logits.shape == (BATCH, NUM_CLASSES)
    assert emb.shape == (BATCH, model.embed_dim)
    assert torch.isfinite(logits.float()).all()
    # bfloat16 keeps about 3 significant digits: the logits stay close to float32's.
    scale = reference.abs().max()
    assert (logits.float() - reference).abs().max() < 0.1 * scale + 0.1


@pytest.mark.parametrize("name", list_models())
def test_gradients_reach_every_parameter(name: str) -> None:
    model = copy.deepcopy(_model(name)).train()
    x = _images(model)
    model(x).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"zero gradient for {pname}"


@pytest.mark.parametrize("name", list_models())
def test_final_map_size_matches_features(name: str) -> None:
    model = _model(name)
    side = model.min_input_size
    with torch.no_grad():
        feats = model.features(_images(model, batch=1, size=side))
    assert feats.shape[-2:] == (model.final_map_size(side),) * 2


@pytest.mark.parametrize("name", list_models())
def test_model_info_and_unknown_option(name: str) -> None:
    info = model_info(name)
    assert info["name"] == name
    assert info["description"] and "\n" not in info["description"]
    assert isinstance(info["options"], dict)
    with pytest.raises(UsageError, match="not_an_option") as err:
        create_model(name, NUM_CLASSES, not_an_option=1)
    for option in info["options"]:
        assert option in str(err.value)


@pytest.mark.parametrize("name", list_models())
def test_stage_index_is_checked(name: str) -> None:
    model = _model(name)
    x = _images(model, batch=1)
    with pytest.raises(UsageError, match="out of range"):
        model.forward_to(x, model.num_stages + 1)
    with pytest.raises(UsageError, match="out of range"):
        model.forward_from(x, -1)
    with pytest.raises(TypeError):
        model.forward_to(x, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "size", "expected"),
    [("preactresnet18", 32, 4), ("preactresnet18", 64, 8), ("wrn16_8", 32, 8)],
)
def test_final_map_sizes_of_the_cifar_nets(name: str, size: int, expected: int) -> None:
    model = _model(name)
    with torch.no_grad():
        feats = model.features(_images(model, batch=1, size=size))
    assert feats.shape[-2:] == (expected, expected)
    assert model.final_map_size(size) == expected


def test_resnet50_final_map_is_7x7_at_224() -> None:
    model = _model("resnet50")
    assert model.min_input_size == 64
    with torch.no_grad():
        feats = model.features(_images(model, batch=1, size=224))
    assert feats.shape == (1, 2048, 7, 7)
    assert model.final_map_size(224) == 7


def test_known_architectures() -> None:
    n_params = {
        name: sum(p.numel() for p in _model(name).parameters())
        for name in ("preactresnet18", "wrn16_8", "resnet50")
    }
    # Published sizes: PreActResNet-18 11.2M, WRN-16-8 11.0M, ResNet-50 25.6M (with 1000 classes).
    assert n_params["preactresnet18"] == 11_172_170
    assert n_params["wrn16_8"] == 10_961_370
    assert n_params["resnet50"] == 25_557_032 - 2048 * 990 - 990
    assert _model("preactresnet18").num_stages == 4
    assert _model("wrn16_8").num_stages == 3
    assert _model("resnet50").num_stages == 4
    assert _model("preactresnet18").embed_dim == 512
    assert _model("wrn16_8").embed_dim == 512
    assert _model("resnet50").embed_dim == 2048


def test_width_options_change_embed_dim() -> None:
    small = create_model("preactresnet18", NUM_CLASSES, width=16)
    assert small.embed_dim == 128
    assert small.stages[0][0].conv1.out_channels == 16
    assert small(torch.zeros(2, 3, 32, 32)).shape == (2, NUM_CLASSES)
    narrow = create_model("wrn16_8", NUM_CLASSES, widen=2, depth=10)
    assert narrow.embed_dim == 128
    assert len(narrow.stages[0]) == 1  # depth 10: one block per stage


def test_string_options_are_converted() -> None:
    assert create_model("preactresnet18", 3, width="8").embed_dim == 64
    with pytest.raises(UsageError, match="width"):
        create_model("preactresnet18", 3, width="wide")


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("preactresnet18", {"width": 0}),
        ("preactresnet18", {"width": 1.5}),
        ("wrn16_8", {"depth": 15}),
        ("wrn16_8", {"widen": -1}),
        ("wrn16_8", {"dropout": 1.0}),
    ],
)
def test_bad_option_values_are_refused(name: str, options: dict) -> None:
    with pytest.raises(UsageError, match=next(iter(options))):
        create_model(name, NUM_CLASSES, **options)


def test_unknown_model_name_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as err:
        create_model("preactresnet19", NUM_CLASSES)
    for name in list_models():
        assert name in str(err.value)


@pytest.mark.parametrize("num_classes", [1, 0, -3, True, 2.0])
def test_bad_num_classes_is_refused(num_classes: object) -> None:
    with pytest.raises(UsageError, match="num_classes"):
        create_model("preactresnet18", num_classes, width=4)  # type: ignore[arg-type]


def test_list_models_filters() -> None:
    assert list_models("preact*") == ["preactresnet18"]
    assert "resnet50" in list_models()
    assert "resnet50" not in list_models(exclude="resnet*")


def test_seed_fixes_the_weights_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = create_model("preactresnet18", NUM_CLASSES, seed=1, width=4).state_dict()
    b = create_model("preactresnet18", NUM_CLASSES, seed=1, width=4).state_dict()
    c = create_model("preactresnet18", NUM_CLASSES, seed=2, width=4).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["stem.weight"], c["stem.weight"])


def test_init_is_kaiming_and_batchnorm_is_identity() -> None:
    model = create_model("wrn16_8", NUM_CLASSES, seed=0, widen=1)
    conv = model.stages[2][0].conv2  # 64 -> 64 channels, 3x3: fan_out = 576
    assert abs(conv.weight.std().item() - (2 / 576) ** 0.5) < 0.1 * (2 / 576) ** 0.5
    bn = model.stages[2][-2]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    assert torch.equal(model.head.bias, torch.zeros_like(model.head.bias))


def test_input_size_check() -> None:
    _model("preactresnet18").check_input_size(32)
    with pytest.raises(UsageError, match="at least 64x64"):
        _model("resnet50").check_input_size(32)


def test_registering_a_plugin_model() -> None:
    from torch import nn

    @register_model("tiny_test_net")
    def tiny(num_classes: int, channels: int = 4) -> StagedNet:
        """A two-stage toy network."""
        stages = [nn.Conv2d(channels, channels, 3, padding=1), nn.Conv2d(channels, 8, 1)]
        return StagedNet(nn.Conv2d(3, channels, 3, padding=1), stages, 8, num_classes)

    @register_model("not_staged_test_net")
    def not_staged(num_classes: int) -> nn.Module:
        """Returns the wrong type."""
        return nn.Linear(3, num_classes)

    try:
        assert "tiny_test_net" in list_models()
        assert model_info("tiny_test_net")["options"] == {"channels": 4}
        net = create_model("tiny_test_net", 3, channels=2)
        assert net(torch.zeros(1, 3, 8, 8)).shape == (1, 3)
        assert net.final_map_size(8) == 8
        with pytest.raises(ValueError, match="already registered"):
            register_model("tiny_test_net")(lambda num_classes: None)
        with pytest.raises(TypeError, match="not a StagedNet"):
            create_model("not_staged_test_net", 3)
        with pytest.raises(TypeError, match="num_classes"):
            register_model("bad_test_net")(lambda classes: None)
    finally:
        MODELS.remove("tiny_test_net")
        MODELS.remove("not_staged_test_net")
        MODELS.remove("bad_test_net")
