"""Registries: registration rules, building from configs, and the messages users see."""

import warnings

import pytest

from detlab.config import Config
from detlab.registry import (
    BACKBONES,
    DATASETS,
    DETECTORS,
    HEADS,
    LOSSES,
    MODELS,
    NECKS,
    OPTIMIZERS,
    PIPELINES,
    TRANSFORMS,
    BuildArgumentError,
    RegistrationError,
    Registry,
    UnknownTypeError,
    build_from_cfg,
)


@pytest.fixture
def things():
    return Registry("thing")


def test_aliases_are_one_table():
    for alias in (BACKBONES, NECKS, HEADS, LOSSES, DETECTORS):
        assert alias is MODELS
    assert PIPELINES is TRANSFORMS
    assert MODELS is not DATASETS


def test_register_as_decorator_and_call(things):
    @things.register_module()
    class Plain:
        def __init__(self, a: int = 1):
            self.a = a

    @things.register_module(name="Renamed")
    class Other:
        pass

    def make_pair(x: int, y: int = 2):
        return (x, y)

    returned = things.register_module(module=make_pair)
    assert returned is make_pair
    things.register_module(name=["AliasA", "AliasB"], module=Plain)
    assert things.get("Plain") is Plain and things.get("Renamed") is Other
    assert things.get("AliasA") is Plain and things.get("AliasB") is Plain
    assert "Plain" in things and "Missing" not in things
    assert things.list() == sorted(["Plain", "Renamed", "make_pair", "AliasA", "AliasB"])
    assert len(things) == 5 and list(things) == things.list()
    assert things.get("Missing", None) is None


def test_build_from_dict_config_and_object(things):
    @things.register_module()
    class Box:
        def __init__(self, size: int, color: str = "red"):
            self.size, self.color = size, color

    @things.register_module()
    def area(w: float, h: float) -> float:
        return w * h

    cfg = dict(type="Box", size=3)
    box = things.build(cfg)
    assert (box.size, box.color) == (3, "red")
    assert cfg == dict(type="Box", size=3)  # the config is not consumed
    assert things.build(Config(dict(type="Box", size=4, color="blue"))).color == "blue"
    assert things.build(dict(type="Box", size=1), color="green").color == "green"  # default_args
    assert things.build(dict(type="Box", size=1, color="blue"), color="green").color == "blue"
    assert things.build(box) is box  # already built
    assert things.build(None) is None
    assert things.build(dict(type="area", w=2, h=3)) == 6
    assert things.build(dict(type=Box, size=9)).size == 9  # a class as type
    assert things.build(dict(type="Box", size=5, _delete_=True)).size == 5
    assert build_from_cfg(dict(type="Box"), things, dict(size=7)).size == 7


def test_reregistration_needs_force(things):
    @things.register_module()
    class Dup:
        pass

    class Another:
        pass

    with pytest.raises(RegistrationError, match="'Dup' is already registered.*force=True"):
        things.register_module(name="Dup", module=Another)
    things.register_module(name="Dup", module=Another, force=True)
    assert things.get("Dup") is Another
    things.register_module(name="Dup", module=Another)  # the same object again is fine


def test_builtin_names_are_protected():
    class ResNet:  # a user class that happens to share a built-in's name
        pass

    with pytest.raises(RegistrationError, match="'SGD' is already registered"):
        OPTIMIZERS.register_module(name="SGD", module=ResNet)


def test_notebook_cell_run_twice_replaces_with_a_warning(things):
    source = "class Cell:\n    version = {}\n"
    first, second = {"__name__": "__main__"}, {"__name__": "__main__"}
    exec(source.format(1), first)
    exec(source.format(2), second)
    things.register_module(module=first["Cell"])
    with pytest.warns(UserWarning, match="defined again in __main__"):
        things.register_module(module=second["Cell"])
    assert things.get("Cell").version == 2


def test_main_class_cannot_silently_shadow_a_library_class(things):
    @things.register_module(name="Cell")
    class Library:
        pass

    ns = {"__name__": "__main__"}
    exec("class Cell:\n    pass\n", ns)
    with pytest.raises(RegistrationError):
        things.register_module(module=ns["Cell"])


def test_only_callables_register(things):
    with pytest.raises(RegistrationError):
        things.register_module(name="x", module=3)
    with pytest.raises(TypeError):
        things.register_module(force="yes")


def test_unknown_type_suggests_the_closest_names_and_the_path(things):
    for name in ("ATSS", "FCOS", "RetinaNet"):
        things.register_module(name=name, module=lambda: None)
    with pytest.raises(UnknownTypeError) as err:
        things.build(dict(type="ATS"))
    message = str(err.value)
    assert "'ATS' is not in the thing registry" in message and "Did you mean 'ATSS'" in message
    assert isinstance(err.value, KeyError)
    with pytest.raises(UnknownTypeError, match=r"\(at model\.detector\)"):
        things.build(dict(type="Retina"), _path="model.detector")


def test_unknown_type_registered_elsewhere_says_where():
    dataset_registry = Registry("dataset-for-test")
    dataset_registry.register_module(name="MyCocoLike", module=lambda: None)
    other = Registry("model-for-test")
    with pytest.raises(UnknownTypeError, match="registered as a dataset-for-test"):
        other.build(dict(type="MyCocoLike"))


def test_missing_type_key(things):
    with pytest.raises(UnknownTypeError, match="has no 'type' key"):
        things.build(dict(size=3), _path="model.neck")


def test_bad_key_names_class_key_closest_params_and_path(things):
    @things.register_module()
    class FocalLike:
        def __init__(self, use_sigmoid: bool = True, gamma: float = 2.0, alpha: float = 0.25,
                     loss_weight: float = 1.0):
            pass

    with pytest.raises(BuildArgumentError) as err:
        things.build(dict(type="FocalLike", gama=2.0), _path="model.bbox_head.loss_cls")
    message = str(err.value)
    assert "FocalLike does not accept 'gama'" in message
    assert "model.bbox_head.loss_cls.gama" in message
    assert "Did you mean 'gamma'" in message
    assert "use_sigmoid, gamma, alpha, loss_weight" in message
    assert isinstance(err.value, TypeError)


def test_missing_required_argument(things):
    @things.register_module()
    class NeedsSize:
        def __init__(self, size: int):
            pass

    with pytest.raises(BuildArgumentError, match=r"NeedsSize \(at model\) needs 'size'"):
        things.build(dict(type="NeedsSize"), _path="model")


def test_kwargs_components_are_not_checked(things):
    @things.register_module()
    class Open:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    assert things.build(dict(type="Open", anything=1)).kwargs == {"anything": 1}


def test_nested_builds_find_their_config_path(things):
    @things.register_module()
    class Loss:
        def __init__(self, weight: float = 1.0):
            pass

    @things.register_module()
    class Head:
        def __init__(self, loss_cls: dict, extra: list = ()):
            self.loss_cls = things.build(loss_cls)
            self.extra = [things.build(e) for e in extra]

    @things.register_module()
    class Detector:
        def __init__(self, bbox_head: dict):
            self.bbox_head = things.build(bbox_head)

    ok = things.build(dict(type="Detector", bbox_head=dict(type="Head", loss_cls=dict(
        type="Loss"))), _path="model")
    assert isinstance(ok.bbox_head.loss_cls, Loss)
    with pytest.raises(BuildArgumentError, match=r"model\.bbox_head\.loss_cls\.wieght"):
        things.build(dict(type="Detector", bbox_head=dict(type="Head", loss_cls=dict(
            type="Loss", wieght=2.0))), _path="model")
    with pytest.raises(UnknownTypeError, match=r"at model\.bbox_head\.extra\.1"):
        things.build(dict(type="Detector", bbox_head=dict(
            type="Head", loss_cls=dict(type="Loss"), extra=[dict(type="Loss"), dict(type="Los")])),
            _path="model")


def test_error_inside_a_constructor_gets_a_note_with_the_path(things):
    @things.register_module()
    class Fails:
        def __init__(self, n: int = 0):
            raise ValueError("n must be positive")

    @things.register_module()
    class Outer:
        def __init__(self, inner: dict):
            things.build(inner)

    with pytest.raises(ValueError) as err:
        things.build(dict(type="Outer", inner=dict(type="Fails")), _path="model")
    notes = getattr(err.value, "__notes__", [])
    assert notes == ["detlab: raised while building Fails (at model.inner)"]


def test_builtin_optimizers_are_registered():
    import torch

    assert {"SGD", "Adam", "AdamW", "RMSprop"} <= set(OPTIMIZERS.list())
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = OPTIMIZERS.build(dict(type="SGD", lr=0.1, momentum=0.9), params=params)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9


def test_registry_repr_lists_names(things):
    things.register_module(name="Z", module=lambda: None)
    assert "Z" in repr(things) and "thing" in repr(things)


def test_no_warning_when_registering_fresh_names(things):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        things.register_module(name="Fresh", module=lambda: None)
