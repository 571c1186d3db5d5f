"""The training methods: conformance over the registry, and each method's equations.

Conformance tests run over ``list_methods()`` (so a newly registered method is tested without
anyone writing a test for it) on a tiny PreActResNet-18; the equation tests rebuild each
method's loss from the functional core, with the draws replayed from a copy of the method's
generator in the draw order its docstring states.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixbench.errors import UsageError
from mixbench.methods import functional as fn
from mixbench.methods import get_method, get_method_class, list_methods
from mixbench.models import create_model, list_models

from .conftest import installed_methods, net_for

SEVEN = ["alignmixup", "cutmix", "dense_multimix", "erm", "manifold_mixup", "mixup", "multimix"]

#: Parameters that force each method's mixing branch (its coins otherwise skip it sometimes).
MIX_BRANCH: dict[str, dict[str, Any]] = {
    "cutmix": {"prob": 1.0},
    "saliencymix": {"prob": 1.0},
    "alignmixup": {"align_prob": 1.0},
    "multimix": {"prob": 1.0, "n": 50},
    "dense_multimix": {"prob": 1.0, "n": 50},
    "guidedmixup": {"prob": 1.0},
}

#: Every registered method with its defaults, plus the mixing branches and variants.
VARIANTS: list[tuple[str, dict[str, Any]]] = [(name, {}) for name in list_methods()] + [
    *MIX_BRANCH.items(),
    ("manifold_mixup", {"loss": "bce"}),
    ("multimix", {"prob": 0.0, "fallback": "erm", "clean_weight": 0.5}),
    ("multimix", {"prob": 1.0, "m": 5, "clean_weight": 1.0}),
    ("dense_multimix", {"prob": 1.0, "n": 20, "attention": "softmax"}),
    ("dense_multimix", {"prob": 1.0, "n": 20, "attention": "none"}),
    ("puzzlemix", {"loss": "bce", "clean_lam": 1.0}),
    ("puzzlemix", {"block_nums": (16,), "t_size": -1}),
    ("comixup", {"loss": "bce", "clean_lam": 0.0}),
    ("comixup", {"part": 3, "block_num": 2, "tau_type": "soft", "n_iter": 2}),
    # The decoupled loss option of the two-label methods.
    ("mixup", {"loss": "decoupled"}),
    ("cutmix", {"prob": 1.0, "loss": "decoupled", "dm_mode": "less", "dm_power": 0.5}),
    ("manifold_mixup", {"loss": "decoupled"}),
    ("alignmixup", {"align_prob": 1.0, "loss": "decoupled", "dm_mode": "more"}),
    ("regmixup", {"loss": "decoupled"}),
    ("mixupe", {"loss": "decoupled", "dm_eta": 0.5}),
    ("decouplemix", {"alpha": 0.2, "eta": 0.01, "mode": "more", "power": 0.5}),
    ("saliencymix", {"prob": 1.0, "loss": "decoupled"}),
    ("puzzlemix", {"loss": "decoupled", "block_nums": (4,)}),
    ("fmix", {"max_soft": 0.1}),
    ("fmix", {"reformulate": True}),
    ("resizemix", {"interpolation": "bilinear"}),
    ("resizemix", {"scale_dist": "beta", "alpha": 0.5}),
    ("smoothmix", {"label_weight": "openmixup"}),
    ("guidedmixup", {"guided_type": "ap", "prob": 1.0}),
    ("guidedmixup", {"guided_type": "ap", "prob": 1.0, "clean_lam": 1.0, "loss": "bce"}),
    ("guidedmixup", {"prob": 1.0, "loss": "bce"}),
    ("guidedmixup", {"prob": 1.0, "pairing": "random"}),
    ("fmix", {"loss": "decoupled"}),
    ("guidedmixup", {"prob": 1.0, "loss": "decoupled", "dm_mode": "less"}),
]
VARIANT_IDS = [name + "".join(f"-{k}={v}" for k, v in p.items()) for name, p in VARIANTS]


def draws_nothing(name: str, params: dict[str, Any]) -> bool:
    """Variants without any random draw: GuidedMixup mixing every batch with the greedy
    pairing is a deterministic function of the batch (and the network)."""
    return (
        name == "guidedmixup"
        and params.get("prob") == 1.0
        and params.get("pairing", "greedy") == "greedy"
    )


#: Cheap options of the registered models, for the tests that run over every model.
TINY_MODEL_OPTIONS: dict[str, dict[str, Any]] = {
    "preactresnet18": {"width": 4},
    "wrn16_8": {"widen": 1},
}


_MODELS: dict[str, nn.Module] = {}


def cached_model(name: str, num_classes: int) -> nn.Module:
    """A fresh copy of a tiny version of model ``name`` (built once per session)."""
    if name not in _MODELS:
        options = TINY_MODEL_OPTIONS.get(name, {})
        _MODELS[name] = create_model(name, num_classes, seed=0, **options)
    return copy.deepcopy(_MODELS[name]).train()


HAS_TIMM = importlib.util.find_spec("timm") is not None


def tiny_net(num_classes: int = 10, method: str | None = None) -> nn.Module:
    """A tiny PreActResNet-18, or a tiny ViT for a method that needs one."""
    return net_for(method, num_classes)


def batch(b: int = 8, size: int = 32, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, size, size, generator=g)
    labels = torch.randint(classes, (b,), generator=g)
    return images, labels


def make(name: str, params: dict[str, Any], seed: int = 0):
    method = get_method(name, **params)
    method.seed(seed)
    return method


def stream(method) -> torch.Generator:
    """A copy of the method's CPU generator, to replay its draws."""
    g = torch.Generator()
    g.set_state(method.generator("cpu").get_state())
    return g


def coin(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


# -- the registry and the declarations ---------------------------------------------------------


def test_all_seven_methods_are_registered() -> None:
    assert set(SEVEN) <= set(list_methods())


@pytest.mark.parametrize("name", SEVEN)
def test_each_method_declares_its_paper(name: str) -> None:
    cls = get_method_class(name)
    assert cls.description and "\n" not in cls.description
    assert cls.paper
    module_doc = sys.modules[cls.__module__].__doc__ or ""
    if name != "erm":
        assert "arXiv" in cls.paper and "arXiv" in module_doc
        arxiv_id = cls.paper.split("arXiv:")[1]
        assert arxiv_id in module_doc and arxiv_id in (cls.__doc__ or "")


# MultiMix's settings as methods.md gives them: the ``paper`` set.
METHODS_MD_MULTIMIX = {
    "n": 1000,
    "alpha": 1.0,
    "m": 0,
    "prob": 0.5,
    "fallback": "mixup",
    "fallback_alpha": 1.0,
    "clean_weight": 0.0,
}


#: The loss option of every two-label method at its defaults: soft-target cross-entropy.
TWO_LABEL = {"loss": "ce", "dm_eta": 0.1, "dm_mode": "both", "dm_power": 1.0}


def test_defaults_are_the_papers() -> None:
    expected = {
        "erm": {},
        "mixup": {"alpha": 1.0, **TWO_LABEL},
        "cutmix": {"alpha": 1.0, "prob": 0.5, **TWO_LABEL},
        "manifold_mixup": {"alpha": 2.0, "layers": (0, 1, 2), **TWO_LABEL},
        "alignmixup": {
            **{"alpha": 2.0, "align_prob": 0.5, "eps": 0.1, "max_iter": 100, "tol": 0.1},
            **TWO_LABEL,
        },
        # MultiMix and Dense MultiMix: the paper's settings, mixed examples only.
        "multimix": METHODS_MD_MULTIMIX,
        "dense_multimix": {**METHODS_MD_MULTIMIX, "attention": "similarity"},
        "saliencymix": {"alpha": 1.0, "prob": 0.5, **TWO_LABEL},
        "puzzlemix": {
            **{"alpha": 1.0, "prob": 1.0, "block_nums": (2, 4, 8, 16), "beta": 1.2},
            **{"gamma": 0.5, "eta": 0.2, "neigh_size": 4, "n_labels": 3, "transport": True},
            **{"t_eps": 0.8, "t_size": 4, "clean_lam": 0.0, "workers": 0, **TWO_LABEL},
        },
        "comixup": {
            **{"alpha": 2.0, "part": 20, "block_num": 4, "beta": 0.32, "gamma": 1.0},
            **{"tau": 0.83, "tau_type": "hard", "eta": 0.05, "omega": 0.001, "n_iter": 4},
            **{"resolve": True, "clean_lam": 1.0, "loss": "ce", "prob": 1.0, "workers": 0},
        },
        # Decoupled Mixup: OpenMixup's base decoupled setting; RegMixup's CIFAR-10 alpha;
        # MixupE's official README command (code version 3).
        "decouplemix": {"alpha": 1.0, "eta": 0.1, "mode": "both", "power": 1.0},
        "regmixup": {"alpha": 20.0, **TWO_LABEL},
        "mixupe": {"alpha": 2.0, "eta": 0.001, "threshold": 1.0, **TWO_LABEL},
        "fmix": {
            "alpha": 1.0,
            "decay_power": 3.0,
            "max_soft": 0.0,
            "reformulate": False,
            **TWO_LABEL,
        },
        "resizemix": {
            **{"scale_min": 0.1, "scale_max": 0.8, "scale_dist": "uniform", "alpha": 1.0},
            "interpolation": "nearest",
            **TWO_LABEL,
        },
        "gridmixup": {
            **{"alpha": 0.2, "n_holes_min": 2, "n_holes_max": 6, "hole_aspect_min": 1.0},
            **{"hole_aspect_max": 1.0, "cut_area_min": 0.5, "cut_area_max": 1.0},
            **{"cut_aspect_min": 0.5, "cut_aspect_max": 2.0},
            **TWO_LABEL,
        },
        "smoothmix": {"sigma_min": 0.25, "sigma_max": 0.5, "label_weight": "paper", **TWO_LABEL},
        "guidedmixup": {
            **{"guided_type": "sr", "prob": 0.5, "pairing": "greedy", "blur": 7, "sigma": 3.0},
            **{"clean_lam": 0.0, **TWO_LABEL},
        },
    }
    for name, params in expected.items():
        assert get_method(name).hparams == params


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("mixup", {"alpha": 0.0}, "alpha"),
        ("cutmix", {"prob": 1.5}, "prob"),
        ("cutmix", {"alpha": "-1"}, "alpha"),
        ("manifold_mixup", {"loss": "mse"}, "loss"),
        ("manifold_mixup", {"layers": ()}, "layers"),
        ("manifold_mixup", {"layers": "(-1, 2)"}, "layers"),
        ("alignmixup", {"eps": 0.0}, "eps"),
        ("alignmixup", {"max_iter": 0}, "max_iter"),
        ("multimix", {"n": 0}, "n"),
        ("multimix", {"m": -1}, "m"),
        ("multimix", {"fallback": "cutmix"}, "fallback"),
        ("dense_multimix", {"attention": "max"}, "attention"),
        ("dense_multimix", {"clean_weight": -0.5}, "clean_weight"),
        ("erm", {"alpha": 1.0}, "alpha"),
        ("mixup", {"loss": "bce"}, "loss"),
        ("mixup", {"dm_mode": "most"}, "dm_mode"),
        ("cutmix", {"dm_eta": -0.1}, "dm_eta"),
        ("manifold_mixup", {"dm_power": -1.0}, "dm_power"),
        ("multimix", {"loss": "decoupled"}, "loss"),
        ("comixup", {"loss": "decoupled"}, "loss"),
        ("decouplemix", {"mode": "all"}, "mode"),
        ("regmixup", {"alpha": 0.0}, "alpha"),
        ("mixupe", {"eta": -1.0}, "eta"),
    ],
)
def test_bad_parameters_are_usage_errors(name: str, params: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        get_method(name, **params)


def test_parameters_parse_from_strings() -> None:
    method = get_method("manifold_mixup", layers="1,2", alpha="0.5")
    assert method.layers == (1, 2) and method.alpha == 0.5
    assert callable(method.loss) and method.loss_kind == "ce"  # the "loss" parameter
    assert get_method("multimix", n="12", fallback="erm").n == 12


def test_manifold_mixup_rejects_layers_beyond_the_network() -> None:
    images, labels = batch()
    with pytest.raises(UsageError, match="layer 5"):
        get_method("manifold_mixup", layers=(5,)).loss(tiny_net(), images, labels)


#: Input-space methods that need an optional extra, run only where it is installed.
INPUT_SPACE_EXTRA = [
    (n, {"prob": 1.0}) for n in ["saliencymix", "puzzlemix", "comixup"] if n in installed_methods()
]


def test_embedding_methods_need_a_staged_backbone() -> None:
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    images, labels = batch()
    for name, params in [*MIX_BRANCH.items(), ("manifold_mixup", {})]:
        if name in ("cutmix", "saliencymix", "puzzlemix", "comixup", "guidedmixup"):
            continue
        with pytest.raises(UsageError, match="staged backbone"):
            get_method(name, **params).loss(plain, images, labels)
    # Input-space methods work with any classifier.
    for name, params in [
        *[("erm", {}), ("mixup", {}), ("cutmix", {}), *INPUT_SPACE_EXTRA],
        *[("fmix", {}), ("resizemix", {}), ("gridmixup", {}), ("smoothmix", {})],
        *[("guidedmixup", {"prob": 1.0}), ("guidedmixup", {"prob": 1.0, "guided_type": "ap"})],
    ]:
        assert torch.isfinite(get_method(name, **params).loss(plain, images, labels))


# -- conformance, over every registered method ---------------------------------------------------


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
def test_loss_is_a_finite_scalar_with_gradients_everywhere(name: str, params: dict) -> None:
    model = tiny_net(method=name)
    images, labels = batch()
    loss = make(name, params).loss(model, images, labels)
    assert loss.shape == () and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() > 0
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
    assert model.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
def test_deterministic_under_a_seed(name: str, params: dict) -> None:
    # A fresh network per call: a train-mode pass moves the batch-norm statistics, which an
    # eval-mode saliency pass (PuzzleMix) reads.
    images, labels = batch()
    first = [
        make(name, params, seed=s).loss(tiny_net(method=name), images, labels).item()
        for s in range(4)
    ]
    again = [
        make(name, params, seed=s).loss(tiny_net(method=name), images, labels).item()
        for s in range(4)
    ]
    assert first == again
    # Consecutive calls continue the stream; a checkpointed state replays it.
    model = tiny_net(method=name)
    method = make(name, params, seed=3)
    method.loss(model, images, labels)
    state = copy.deepcopy(method.state_dict())
    kept = copy.deepcopy(model)
    one = method.loss(model, images, labels).item()
    method.load_state_dict(state)
    assert method.loss(kept, images, labels).item() == one
    if name != "erm" and params.get("prob") != 0.0 and not draws_nothing(name, params):
        assert len(set(first)) > 1, "different seeds should give different draws"


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
def test_inputs_are_left_untouched(name: str, params: dict) -> None:
    images, labels = batch()
    kept = images.clone(), labels.clone()
    make(name, params).loss(tiny_net(method=name), images, labels).backward()
    assert torch.equal(images, kept[0]) and torch.equal(labels, kept[1])


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
def test_one_sgd_step_lowers_the_loss(name: str, params: dict) -> None:
    model = tiny_net(method=name)
    images, labels = batch()
    method = make(name, params)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    method.seed(11)  # the same draw before each evaluation
    before = method.loss(model, images, labels)
    before.backward()
    optimizer.step()
    method.seed(11)
    with torch.no_grad():
        after = method.loss(model, images, labels)
    assert after.item() < before.item()


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
def test_autocast_bfloat16(name: str, params: dict) -> None:
    model = tiny_net(method=name)
    images, labels = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = make(name, params).loss(model, images, labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    reference = make(name, params).loss(tiny_net(method=name), images, labels)
    assert loss.item() == pytest.approx(reference.item(), rel=0.1)


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
def test_channels_last_gives_the_same_loss(name: str, params: dict) -> None:
    """Channels-last inputs and weights give the loss of the default layout.

    Forward only: on the CPU, oneDNN's backward of a narrow 1x1 stride-2 convolution in
    channels-last layout can hang or corrupt memory (torch 2.14), which is why the engine uses
    channels-last on CUDA only; the backward is checked there, below.
    """
    images, labels = batch()
    expected = make(name, params).loss(tiny_net(method=name), images, labels)
    model = tiny_net(method=name).to(memory_format=torch.channels_last)
    with torch.no_grad():
        loss = make(name, params).loss(
            model, images.contiguous(memory_format=torch.channels_last), labels
        )
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="channels-last backward is used (and checked) on CUDA only: on the CPU oneDNN's "
    "backward of narrow 1x1 stride-2 convolutions in that layout can hang",
)
@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
def test_channels_last_backward_on_cuda(name: str, params: dict) -> None:
    images, labels = (t.cuda() for t in batch())
    expected = make(name, params).loss(tiny_net(method=name).cuda(), images, labels)
    model = tiny_net(method=name).cuda().to(memory_format=torch.channels_last)
    loss = make(name, params).loss(
        model, images.contiguous(memory_format=torch.channels_last), labels
    )
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=1e-4)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("model_name", list_models())
@pytest.mark.parametrize("name,params", [(n, MIX_BRANCH.get(n, {})) for n in list_methods()])
def test_every_method_on_every_model(model_name: str, name: str, params: dict) -> None:
    model = cached_model(model_name, 5)
    reason = make(name, params).supports(model)
    if reason is not None:
        pytest.skip(f"{name} declares it cannot train {model_name}: {reason}")
    size = max(32, int(getattr(model, "min_input_size", 32)))
    images, labels = batch(b=4, size=size, classes=5)
    loss = make(name, params).loss(model, images, labels)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_training_module_under_ddp(tmp_path) -> None:
    """Backbone and method in one module wrapped in DDP: one forward per step, every
    parameter reduced (DDP fails on the second step if one got no gradient)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")

    class Training(nn.Module):
        def __init__(self, backbone: nn.Module, method) -> None:
            super().__init__()
            self.backbone, self.method = backbone, method

        def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return self.method.loss(self.backbone, images, labels)

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        images, labels = batch()
        for name in installed_methods():
            if make(name, {}).supports(tiny_net()) is not None and not HAS_TIMM:
                continue  # a ViT-only method, without timm to build a ViT
            module = DistributedDataParallel(
                Training(tiny_net(method=name), make(name, MIX_BRANCH.get(name, {})))
            )
            optimizer = torch.optim.SGD(module.parameters(), lr=0.01)
            for _ in range(2):
                optimizer.zero_grad()
                loss = module(images, labels)
                loss.backward()
                optimizer.step()
                assert torch.isfinite(loss), name
    finally:
        dist.destroy_process_group()


# -- the equations of each method -----------------------------------------------------------------


def test_erm_is_cross_entropy() -> None:
    model, (images, labels) = tiny_net(), batch()
    torch.testing.assert_close(
        get_method("erm").loss(model, images, labels), F.cross_entropy(model(images), labels)
    )


@pytest.mark.parametrize("seed", range(3))
def test_mixup_equation(seed: int) -> None:
    model, (images, labels) = tiny_net(), batch()
    method = make("mixup", {"alpha": 0.4}, seed)
    g = stream(method)
    lam = float(fn.sample_beta(0.4, g))
    perm = torch.randperm(8, generator=g)
    x_mix = lam * images + (1 - lam) * images[perm]
    logits = model(x_mix)
    expected = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(
        logits, labels[perm]
    )
    torch.testing.assert_close(method.loss(model, images, labels), expected)


def test_cutmix_equation() -> None:
    model, (images, labels) = tiny_net(), batch()
    seen = set()
    for seed in range(8):
        method = make("cutmix", {}, seed)
        g = stream(method)
        if coin(g) >= 0.5:
            seen.add("erm")
            expected = F.cross_entropy(model(images), labels)
        else:
            seen.add("mix")
            lam = float(fn.sample_beta(1.0, g))
            (top, bottom, left, right), lam = fn.cutmix_box(32, 32, lam, g)
            perm = torch.randperm(8, generator=g)
            x_mix = images.clone()
            x_mix[:, :, top:bottom, left:right] = images[perm][:, :, top:bottom, left:right]
            assert lam == pytest.approx(1 - (bottom - top) * (right - left) / 1024)
            logits = model(x_mix)
            expected = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(
                logits, labels[perm]
            )
        torch.testing.assert_close(method.loss(model, images, labels), expected)
    assert seen == {"erm", "mix"}
    # prob = 0 is plain ERM.
    torch.testing.assert_close(
        make("cutmix", {"prob": 0.0}).loss(model, images, labels),
        F.cross_entropy(model(images), labels),
    )


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_manifold_mixup_equation(loss: str) -> None:
    model, (images, labels) = tiny_net(), batch()
    y = F.one_hot(labels, 10).float()
    stages = set()
    for seed in range(10):
        method = make("manifold_mixup", {"loss": loss}, seed)
        g = stream(method)
        k = (0, 1, 2)[int(torch.randint(3, (1,), generator=g))]
        stages.add(k)
        lam = float(fn.sample_beta(2.0, g))
        perm = torch.randperm(8, generator=g)
        hidden = model.forward_to(images, k)
        logits = model.forward_from(lam * hidden + (1 - lam) * hidden[perm], k)
        target = lam * y + (1 - lam) * y[perm]
        if loss == "ce":
            expected = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
        else:
            expected = F.binary_cross_entropy(torch.softmax(logits, 1), target)
        torch.testing.assert_close(method.loss(model, images, labels), expected)
    assert stages == {0, 1, 2}


def test_alignmixup_equation() -> None:
    model, (images, labels) = tiny_net(), batch()
    branches = set()
    for seed in range(12):
        method = make("alignmixup", {}, seed)
        g = stream(method)
        align = coin(g) < 0.5
        lam = float(fn.sample_beta(2.0, g))
        perm = torch.randperm(8, generator=g)
        if not align:
            branches.add("input")
            logits = model(lam * images + (1 - lam) * images[perm])
        else:
            second = coin(g) < 0.5
            branches.add("second" if second else "first")
            feats = model.features(images)
            b, d, h, w = feats.shape
            a = feats.reshape(b, d, h * w)
            a2 = a[perm]
            cost = fn.alignment_cost(a, a2)  # checked against the brute force elsewhere
            plan = fn.sinkhorn(cost, eps=0.1, max_iter=100, tol=0.1)
            # The plan has the Sinkhorn marginals: columns exactly, rows once converged.
            torch.testing.assert_close(plan.sum(1), torch.full((b, h * w), 1 / (h * w)))
            big_r = h * w * plan
            if second:
                mixed = lam * a + (1 - lam) * torch.bmm(a2, big_r.transpose(1, 2))
            else:
                mixed = lam * torch.bmm(a, big_r) + (1 - lam) * a2
            logits = model.head(mixed.mean(2))
        expected = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(
            logits, labels[perm]
        )
        torch.testing.assert_close(
            method.loss(model, images, labels), expected, rtol=1e-4, atol=1e-5
        )
    assert branches == {"input", "first", "second"}


def test_alignmixup_plan_gets_no_gradient_and_features_do() -> None:
    model, (images, labels) = tiny_net(), batch()
    loss = make("alignmixup", {"align_prob": 1.0}).loss(model, images, labels)
    loss.backward()
    assert model.stem.weight.grad.abs().sum() > 0  # through both A and A2 = A[perm]


def subset_weights(alpha, shape, b, m, g):
    """Dirichlet weights over m examples of b per slice, drawn as the functional core does:
    uniform keys (the m smallest are the subset), then the Dirichlet draws on them."""
    keys = torch.rand((*shape, b), generator=g)
    chosen = keys.topk(m, dim=-1, largest=False).indices
    draws = fn.sample_dirichlet(alpha, (*shape, m), generator=g)
    return torch.zeros((*shape, b)).scatter_(-1, chosen, draws)


def multimix_expected(model, images, labels, n, alpha, g, m=None):
    z = model.pool(model.features(images))
    y = F.one_hot(labels, 10).float()
    if m is None:
        weights = fn.sample_dirichlet(alpha, (n, z.shape[0]), generator=g)
    else:
        weights = subset_weights(alpha, (n,), z.shape[0], m, g)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(n))
    logits = model.head(weights @ z)
    return -((weights @ y) * torch.log_softmax(logits, 1)).sum(1).mean()


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_multimix_equation(alpha: float) -> None:
    model, (images, labels) = tiny_net(), batch()
    method = make("multimix", {"prob": 1.0, "n": 64, "alpha": alpha, "clean_weight": 0.0}, 2)
    g = stream(method)
    assert coin(g) < 1.0
    expected = multimix_expected(model, images, labels, 64, alpha, g)
    torch.testing.assert_close(method.loss(model, images, labels), expected)


def test_multimix_subset_m() -> None:
    model, (images, labels) = tiny_net(), batch()
    method = make("multimix", {"prob": 1.0, "n": 30, "m": 3, "clean_weight": 0.0}, 1)
    g = stream(method)
    coin(g)
    expected = multimix_expected(model, images, labels, 30, 1.0, g, m=3)
    torch.testing.assert_close(method.loss(model, images, labels), expected)
    # m at or above the batch size is the whole batch.
    whole = make("multimix", {"prob": 1.0, "n": 30}, 5).loss(model, images, labels)
    clamped = make("multimix", {"prob": 1.0, "n": 30, "m": 500}, 5).loss(model, images, labels)
    torch.testing.assert_close(clamped, whole)


@pytest.mark.parametrize("name", ["multimix", "dense_multimix"])
def test_prob_zero_is_the_fallback(name: str) -> None:
    model, (images, labels) = tiny_net(), batch()
    erm = make(name, {"prob": 0.0, "fallback": "erm", "clean_weight": 0.0}).loss(
        model, images, labels
    )
    torch.testing.assert_close(erm, F.cross_entropy(model(images), labels))
    for seed in range(3):
        method = make(name, {"prob": 0.0, "fallback_alpha": 0.7, "clean_weight": 0.0}, seed)
        g = stream(method)
        coin(g)
        lam = float(fn.sample_beta(0.7, g))
        perm = torch.randperm(8, generator=g)
        logits = model(lam * images + (1 - lam) * images[perm])
        expected = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(
            logits, labels[perm]
        )
        torch.testing.assert_close(method.loss(model, images, labels), expected)


@pytest.mark.parametrize("name", ["multimix", "dense_multimix"])
@pytest.mark.parametrize("branch", [{"prob": 1.0}, {"prob": 0.0}, {"prob": 0.0, "fallback": "erm"}])
def test_clean_weight_adds_the_clean_cross_entropy_to_mixed_batches_only(
    name: str, branch: dict
) -> None:
    """On a MultiMix batch the clean term is ``clean_weight`` times the clean cross-entropy of
    the batch's own forward pass; a fallback batch's loss is the fallback's alone (its forward
    is on mixed images, or is the clean pass itself: no second pass, no scaled step)."""
    model, (images, labels) = tiny_net(), batch()
    params = {"n": 40, "clean_weight": 0.0, **branch}
    calls = []
    model.stem.register_forward_hook(lambda *args: calls.append(1))
    base = make(name, params, 4).loss(model, images, labels)
    calls.clear()
    weighted = make(name, {**params, "clean_weight": 0.25}, 4).loss(model, images, labels)
    assert len(calls) == 1  # one network pass with the clean term too
    if branch["prob"] == 1.0:
        clean = F.cross_entropy(model.head(model.pool(model.features(images))), labels)
        torch.testing.assert_close(weighted - base, 0.25 * clean, rtol=1e-4, atol=1e-6)
    else:
        torch.testing.assert_close(weighted, base, rtol=0, atol=0)


@pytest.mark.parametrize("attention", ["similarity", "softmax", "none"])
def test_dense_multimix_equation(attention: str) -> None:
    model, (images, labels) = tiny_net(), batch()
    n, alpha = 24, 1.5
    method = make(
        "dense_multimix",
        {"prob": 1.0, "n": n, "alpha": alpha, "attention": attention, "clean_weight": 0.0},
        6,
    )
    g = stream(method)
    coin(g)
    feats = model.features(images)
    b, d, h, w = feats.shape
    r = h * w
    f = feats.reshape(b, d, r)
    score = torch.einsum("bdr,bd->br", f.detach(), f.detach().mean(2))
    if attention == "similarity":
        a = torch.relu(score) / torch.relu(score).sum(1, keepdim=True)
    elif attention == "softmax":
        a = torch.softmax(score / math.sqrt(d), 1)
    else:
        a = torch.full((b, r), 1 / r)
    lam = fn.sample_dirichlet(alpha, (r, n, b), generator=g).transpose(0, 1)  # (n, r, b)
    weights = lam * a.T.unsqueeze(0)
    weights = weights / weights.sum(-1, keepdim=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(n, r))
    z_mix = torch.einsum("kji,idj->kjd", weights, f)
    y_mix = weights @ F.one_hot(labels, 10).float()
    logits = model.head(z_mix)  # the head at every position
    expected = -(y_mix * torch.log_softmax(logits, -1)).sum(-1).mean()  # over n * r terms
    torch.testing.assert_close(method.loss(model, images, labels), expected, rtol=1e-4, atol=1e-5)


def test_generated_examples_are_cheap_for_multimix() -> None:
    """MultiMix runs the network once on the clean batch: a 1000-example loss needs one
    backbone forward, like ERM (checked by counting stem calls)."""
    model, (images, labels) = tiny_net(), batch()
    calls = []
    model.stem.register_forward_hook(lambda *args: calls.append(1))
    for name in ("multimix", "dense_multimix"):
        calls.clear()
        make(name, {"prob": 1.0}).loss(model, images, labels).backward()
        assert len(calls) == 1


@pytest.mark.parametrize("name", ["multimix", "dense_multimix"])
@pytest.mark.parametrize("prob", [0.25, 0.5, 1.0])
def test_prob_is_the_share_of_mixed_batches(name: str, prob: float, monkeypatch) -> None:
    """Each batch draws one coin; it gets the mixed loss exactly when the coin is below prob."""
    model, (images, labels) = tiny_net(), batch(b=4, size=8)
    method = make(name, {"prob": prob, "clean_weight": 0.0}, 11)
    g = stream(method)
    branches: list[str] = []
    cls = type(method)
    monkeypatch.setattr(
        cls, "mixed_loss", lambda self, *a: branches.append("mix") or torch.zeros(())
    )
    monkeypatch.setattr(
        cls, "fallback_loss", lambda self, *a: branches.append("fallback") or torch.zeros(())
    )
    monkeypatch.setattr(type(model), "features", lambda self, x: x)  # no network needed
    for _ in range(400):
        method.loss(model, images, labels)
    expected = ["mix" if coin(g) < prob else "fallback" for _ in range(400)]
    assert branches == expected
    share = branches.count("mix") / 400
    assert abs(share - prob) <= 4 * math.sqrt(prob * (1 - prob) / 400) + 1e-9


def test_dense_multimix_subset_m() -> None:
    """With m < b, every generated example and position mixes m examples of its own."""
    model, (images, labels) = tiny_net(), batch()
    n, m = 12, 3
    method = make("dense_multimix", {"prob": 1.0, "n": n, "m": m, "clean_weight": 0.0}, 7)
    g = stream(method)
    coin(g)
    feats = model.features(images)
    b, d, h, w = feats.shape
    r = h * w
    f = feats.reshape(b, d, r)
    score = torch.einsum("bdr,bd->br", f.detach(), f.detach().mean(2))
    a = torch.relu(score) / torch.relu(score).sum(1, keepdim=True)
    y = F.one_hot(labels, 10).float()
    lam = subset_weights(1.0, (r, n), b, m, g).transpose(0, 1)  # (n, r, b), m non-zeros
    assert ((lam > 0).sum(-1) == m).all()
    weights = lam * a.T.unsqueeze(0)
    weights = torch.where(weights.sum(-1, keepdim=True) == 0, lam, weights)
    weights = weights / weights.sum(-1, keepdim=True)
    z_mix = torch.einsum("kji,idj->kjd", weights, f)
    expected = -((weights @ y) * torch.log_softmax(model.head(z_mix), -1)).sum(-1).mean()
    torch.testing.assert_close(method.loss(model, images, labels), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list_methods())
def test_named_parameter_sets_are_complete_and_valid(name: str) -> None:
    """Every declared set (e.g. ``paper``) names every parameter with a valid value."""
    from mixbench.methods.base import resolve_params

    cls = get_method_class(name)
    for set_name, values in cls.param_sets.items():
        assert set(values) == set(cls.params), (name, set_name)
        assert resolve_params(cls, values) == values


def test_the_paper_set_is_methods_md() -> None:
    paper = METHODS_MD_MULTIMIX
    assert get_method_class("multimix").param_sets["paper"] == paper
    assert get_method_class("dense_multimix").param_sets["paper"] == {
        **paper,
        "attention": "similarity",
    }


@pytest.mark.parametrize("name, alpha", [("alpha-0.05", 0.05), ("alpha-0.01", 0.01)])
def test_the_alpha_sets_are_the_paper_set_with_a_sparser_dirichlet(name: str, alpha: float) -> None:
    sets = get_method_class("multimix").param_sets
    assert sets[name] == {**sets["paper"], "alpha": alpha}
    assert get_method("multimix", **sets[name]).alpha == alpha
    assert name not in get_method_class("dense_multimix").param_sets  # not swept


def test_multimix_with_a_sparse_dirichlet_is_the_clean_loss() -> None:
    """As alpha -> 0 each interpolation vector is one-hot: every generated example is one clean
    example with its label, so the loss tends to the clean cross-entropy (a check of the
    weights' orientation: mixing rows and columns up would not have this limit)."""
    model, (images, labels) = tiny_net(), batch()
    with torch.no_grad():
        model.head.weight.mul_(10)  # confident logits: the clean loss is far from ln(10)
        clean = F.cross_entropy(model.head(model.pool(model.features(images))), labels)
        sparse = make("multimix", {"prob": 1.0, "n": 4000, "alpha": 0.002, "clean_weight": 0.0}, 3)
        flat = make("multimix", {"prob": 1.0, "n": 4000, "alpha": 1.0, "clean_weight": 0.0}, 3)
        # the control: mixing whole batches (alpha = 1) is far from the clean loss
        assert abs(float(flat.loss(model, images, labels)) - float(clean)) > 0.05 * float(clean)
        loss = sparse.loss(model, images, labels)
    torch.testing.assert_close(loss, clean, rtol=0.02, atol=0.0)


def test_multimix_targets_flatten_with_a_large_batch_and_alpha_one() -> None:
    """Why MultiMix alone barely trains with alpha = 1 on a whole batch of 128 (the sweep's
    prob = 1 row): the generated targets are close to the class frequencies, so the
    cross-entropy gives the network almost nothing to fit."""
    labels = torch.arange(128) % 10
    targets = F.one_hot(labels, 10).float()
    z = torch.randn(128, 4)
    g = torch.Generator().manual_seed(0)
    _, dense_alpha, _ = fn.multimix(z, targets, 2000, 1.0, generator=g)
    _, sparse_alpha, _ = fn.multimix(z, targets, 2000, 0.05, generator=g)
    entropy = -(dense_alpha * dense_alpha.clamp_min(1e-12).log()).sum(1).mean()
    assert entropy > 0.97 * math.log(10)  # nearly the uniform targets' ln(10)
    assert dense_alpha.max(1).values.mean() < 0.2  # near the 0.1 of the class frequencies
    assert sparse_alpha.max(1).values.mean() > 0.3  # a small alpha keeps a dominant class
