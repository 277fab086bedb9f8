"""Registries: registration rules, building from configs, and the messages users see."""

import warnings
from typing import Any

import pytest
import torch

from detlab.config import Config, ConfigError
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


def test_a_nested_build_finds_its_path_through_plain_dicts_and_copies(things):
    @things.register_module()
    class Assigner:
        def __init__(self, pos_iou_thr: float):
            pass

    @things.register_module()
    class Head:
        def __init__(self, train_cfg: dict | None = None, extra: dict | None = None):
            copy = {k: dict(v) for k, v in (train_cfg or {}).items()}  # as thaw() does
            self.assigner = things.build(copy["assigner"]) if copy else None
            self.extra = [things.build(e) for e in (extra or {}).get("steps", [])]

    @things.register_module()
    class Detector:
        def __init__(self, head: dict, train_cfg: dict | None = None):
            self.head = things.build(head, train_cfg=train_cfg)

    with pytest.raises(BuildArgumentError, match=r"\(at model\.train_cfg\.assigner\.b\)"):
        things.build(dict(type="Detector", head=dict(type="Head"), train_cfg=dict(
            assigner=dict(type="Assigner", pos_iou_thr=0.5, b=1))), _path="model")
    with pytest.raises(UnknownTypeError, match=r"at model\.head\.extra\.steps\.1\b"):
        things.build(dict(type="Detector", head=dict(type="Head", extra=dict(steps=[
            dict(type="Assigner", pos_iou_thr=0.5), dict(type="Asigner")]))), _path="model")


def test_a_typo_in_the_train_cfg_of_a_real_model_names_its_full_path():
    from detlab.models import build_model

    anchors = dict(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=3,
                   ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128])
    model = dict(
        type="RetinaNet",
        backbone=dict(type="ResNet", depth=18, num_stages=4, out_indices=(1, 2, 3),
                      init_cfg=None),
        neck=dict(type="FPN", in_channels=[128, 256, 512], out_channels=16, start_level=0,
                  add_extra_convs="on_input", num_outs=5),
        bbox_head=dict(type="RetinaHead", num_classes=3, in_channels=16, stacked_convs=1,
                       feat_channels=16, anchor_generator=anchors,
                       bbox_coder=dict(type="DeltaXYWHBBoxCoder"),
                       loss_cls=dict(type="FocalLoss", use_sigmoid=True),
                       loss_bbox=dict(type="L1Loss")),
        # RetinaNet hands train_cfg to its head as a plain dict; the head builds the assigner
        train_cfg=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4,
                                     b=1)))
    with pytest.raises(BuildArgumentError) as err:
        build_model(model)
    assert "MaxIoUAssigner does not accept 'b' (at model.train_cfg.assigner.b)" in str(err.value)


def test_a_built_object_must_agree_with_the_defaults_it_cannot_take(things):
    @things.register_module()
    class Head:
        def __init__(self, num_classes: int = 80, in_channels: int = 256,
                     sizes: tuple = (8, 16), train_cfg: dict | None = None):
            self.num_classes, self.in_channels, self.sizes = num_classes, in_channels, sizes
            self.train_cfg, self.loss = dict(train_cfg or {}), torch.nn.Identity()

    head = Head()
    assert things.build(head) is head
    assert things.build(head, num_classes=80, sizes=[8, 16], in_channels=None) is head
    assert things.build(head, loss=dict(type="L1Loss"), not_an_attribute=3) is head
    with pytest.raises(ConfigError) as err:
        things.build(head, _path="model.bbox_head", num_classes=3)
    assert str(err.value).startswith(
        "Head (at model.bbox_head) is already built with num_classes=80, but num_classes=3 is "
        "given for it here")
    with pytest.raises(ConfigError, match=r"train_cfg=\{\}, but train_cfg=\{'pos': 1\}"):
        things.build(head, train_cfg=dict(pos=1))

    @things.register_module()
    class Detector:
        def __init__(self, bbox_head: Any, num_classes: int = 3):
            self.bbox_head = things.build(bbox_head, num_classes=num_classes)

    with pytest.raises(ConfigError, match=r"Head \(at model\.bbox_head\) .*num_classes=80"):
        things.build(dict(type="Detector", bbox_head=head), _path="model")
    assert things.build(dict(type="Detector", bbox_head=head, num_classes=80)).bbox_head is head


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
