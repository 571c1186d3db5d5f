"""The generic registry and the method registry's contract."""

from __future__ import annotations

import pytest

from mixbench.errors import UnknownNameError
from mixbench.methods import (
    METHODS,
    MixMethod,
    Param,
    get_method,
    list_methods,
    method_info,
    register_method,
)
from mixbench.registry import Registry

ALL_SEVEN = ["alignmixup", "cutmix", "dense_multimix", "erm", "manifold_mixup", "mixup", "multimix"]


def test_registry_refuses_duplicates_and_suggests_close_names():
    reg: Registry[int] = Registry("thing")
    reg.add("alpha", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("alpha", 2)
    with pytest.raises(UnknownNameError) as info:
        reg.get("alpah")
    assert "did you mean alpha" in str(info.value)
    assert "valid thing names: alpha" in str(info.value)


def test_registry_wildcards_sorted():
    reg: Registry[int] = Registry("thing")
    for name in ["b_two", "a_one", "b_one"]:
        reg.add(name, 0)
    assert reg.names() == ["a_one", "b_one", "b_two"]
    assert reg.names("b_*") == ["b_one", "b_two"]
    assert reg.names("*", exclude="*one") == ["b_two"]


def test_all_seven_methods_registered():
    assert set(ALL_SEVEN) <= set(list_methods())


def test_unknown_method_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        get_method("mixpu")
    message = str(info.value)
    assert "did you mean mixup" in message
    for name in ALL_SEVEN:
        assert name in message


@pytest.mark.parametrize("name", ALL_SEVEN)
def test_method_declarations(name):
    info = method_info(name)
    assert info["description"] and "\n" not in info["description"]
    assert info["paper"] or name == "erm"
    for key, p in info["params"].items():
        assert p["type"] in {"int", "float", "str", "bool", "tuple"}, key


def test_get_method_validates_params():
    from mixbench.errors import UsageError

    assert get_method("mixup", alpha="0.4").alpha == 0.4
    with pytest.raises(UsageError, match="must be > 0"):
        get_method("mixup", alpha=0)
    with pytest.raises(UsageError, match="has no parameter 'beta'"):
        get_method("mixup", beta=1.0)
    with pytest.raises(UsageError, match="must be of type float"):
        get_method("mixup", alpha="abc")


def test_register_method_and_generator_seeding():
    @register_method("test_constant")
    class Constant(MixMethod):
        """A constant loss, for the registry test."""

        params = {"value": Param(1.0, float, minimum=0.0)}

        def loss(self, model, images, labels):
            return images.new_tensor(self.value)

    try:
        method = get_method("test_constant", value=2)
        assert method.value == 2.0 and isinstance(method.value, float)
        assert method_info("test_constant")["description"].startswith("A constant loss")
        a = torch_draw(method)
        method.seed(0)
        assert torch_draw(method) == a
        method.seed(1)
        assert torch_draw(method) != a
        state = method.state_dict()
        first = torch_draw(method)
        method.load_state_dict(state)
        assert torch_draw(method) == first
    finally:
        METHODS.remove("test_constant")


def torch_draw(method):
    import torch

    return torch.rand(3, generator=method.generator("cpu")).tolist()


def test_param_parse_types():
    from mixbench.errors import UsageError

    assert Param(1, int).parse("n", "12") == 12
    assert Param(True, bool).parse("flag", "false") is False
    assert Param((0, 1), tuple).parse("layers", "0,2") == (0, 2)
    assert Param("ce", str, choices=("ce", "bce")).parse("loss", "bce") == "bce"
    with pytest.raises(UsageError, match="one of"):
        Param("ce", str, choices=("ce", "bce")).parse("loss", "mse")
    with pytest.raises(UsageError, match="type int"):
        Param(1, int).parse("n", "1.5")
