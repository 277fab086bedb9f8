"""The restricted unpickler: data loads, anything that names code is refused before it runs."""

import collections
import fractions
import io
import os
import pickle

import numpy as np
import pytest
import torch

from detlab import safe_pickle
from detlab.config import ConfigError
from detlab.safe_pickle import UnsafePickleError
from detlab.structures import DetResult


class WritesMarker:
    """Unpickling it would create ``path`` (through ``os.system``)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class CarriesATensorPayload:
    """Pickles as a torch storage whose bytes hold ``WritesMarker`` (plain ``pickle.load``
    would run it through ``torch.storage._load_from_bytes``)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import torch.storage

        inner = io.BytesIO()
        torch.save(WritesMarker(self.path), inner, _use_new_zipfile_serialization=False)
        return (torch.storage._load_from_bytes, (inner.getvalue(),))


PROTOCOLS = [2, 4, 5]  # 2: mmcv's results.pkl; 4: pickle's default; 5: out-of-band arrays


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_results_and_annotation_data_load(tmp_path, protocol):
    data = {
        "results": [[np.zeros((0, 5), np.float32), np.ones((2, 5), np.float32)]],
        "infos": [dict(filename="a.jpg", width=4, height=3,
                       ann=dict(bboxes=np.array([[0, 0, 2, 2]], np.float32),
                                labels=np.array([1], np.int64)))],
        "scalars": (np.float32(0.5), np.int64(3), np.dtype("float16"), 1 + 2j, None, True),
        "containers": (set([1]), frozenset(["a"]), bytearray(b"x"), b"raw", range(3)),
        "ordered": collections.OrderedDict(a=1),
        "objects": np.array(["x", 1], dtype=object),
    }
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = safe_pickle.load(path)
    assert loaded.keys() == data.keys()
    np.testing.assert_array_equal(loaded["results"][0][1], data["results"][0][1])
    np.testing.assert_array_equal(loaded["infos"][0]["ann"]["bboxes"],
                                  data["infos"][0]["ann"]["bboxes"])
    assert loaded["scalars"] == data["scalars"] and loaded["containers"] == data["containers"]
    assert loaded["ordered"] == data["ordered"] and list(loaded["objects"]) == ["x", 1]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_det_results_load_with_their_tensors(protocol):
    result = DetResult(torch.tensor([[1.0, 2.0, 5.0, 6.0]]), torch.tensor([0.9]),
                       torch.tensor([2]), masks=torch.ones(1, 3, 4, dtype=torch.bool),
                       class_names=("a", "b", "c"), meta=dict(img_id=7),
                       image=np.zeros((3, 4, 3), np.uint8))
    (loaded,) = safe_pickle.load(io.BytesIO(pickle.dumps([result], protocol=protocol)))
    assert isinstance(loaded, DetResult) and loaded.class_names == ("a", "b", "c")
    assert torch.equal(loaded.boxes, result.boxes) and torch.equal(loaded.masks, result.masks)
    assert loaded.meta == {"img_id": 7} and loaded.image.shape == (3, 4, 3)


def test_a_pickle_that_runs_a_command_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "results.pkl"
    path.write_bytes(pickle.dumps([WritesMarker(marker)]))
    with pytest.raises(UnsafePickleError) as err:
        safe_pickle.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: refusing to load this pickle: it names "
                              f"{os.system.__module__}.system")
    assert "--trust-pickle" in message and "trust_pickle=True" in message
    assert isinstance(err.value, ConfigError) and isinstance(err.value, pickle.UnpicklingError)
    assert not marker.exists()
    with open(path, "rb") as f:  # an open file is named by its path too
        with pytest.raises(UnsafePickleError, match=str(path)):
            safe_pickle.load(f)
    assert not marker.exists()


def test_a_command_hidden_in_tensor_data_is_refused(tmp_path):
    marker = tmp_path / "ran"
    data = pickle.dumps([CarriesATensorPayload(marker)])
    with pytest.raises(UnsafePickleError, match=r"the data of a tensor in it names .*system"):
        safe_pickle.load(io.BytesIO(data))
    assert not marker.exists()


def test_other_classes_need_trust(tmp_path):
    path = tmp_path / "fraction.pkl"
    path.write_bytes(pickle.dumps(fractions.Fraction(1, 3)))
    with pytest.raises(UnsafePickleError, match=r"names fractions\.Fraction"):
        safe_pickle.load(path)
    assert safe_pickle.load(path, trust=True) == fractions.Fraction(1, 3)
    with pytest.raises(UnsafePickleError, match="convert it to json"):
        safe_pickle.load(path, advice="Or convert it to json.")


# ---- where detlab reads pickles ----------------------------------------------------------------


def test_load_results_reads_arrays_and_refuses_code(tmp_path):
    from detlab.engine.tester import load_results

    path = tmp_path / "results.pkl"
    path.write_bytes(pickle.dumps([[np.array([[0, 0, 4, 4, 0.9]], np.float32),
                                    np.zeros((0, 5), np.float32)]], protocol=2))
    (result,) = load_results(str(path), ("a", "b"))
    assert result.label_names() == ["a"] and result.scores.tolist() == pytest.approx([0.9])
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps([[WritesMarker(marker)]]))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl: refusing .*--trust-pickle"):
        load_results(str(evil))
    assert not marker.exists()
    trusted = tmp_path / "trusted.pkl"  # a class the restricted reader does not know
    trusted.write_bytes(pickle.dumps([[collections.UserList([[1, 2, 3, 4, 0.5]])]]))
    with pytest.raises(UnsafePickleError, match=r"collections\.UserList"):
        load_results(str(trusted))
    (result,) = load_results(str(trusted), trust_pickle=True)
    assert result.boxes.tolist() == [[1, 2, 3, 4]]


def test_annotation_pickles_of_a_custom_dataset(tmp_path):
    from detlab.data.datasets.custom import CustomDataset

    infos = [dict(filename="a.jpg", width=8, height=6,
                  ann=dict(bboxes=np.array([[1, 1, 5, 5]], np.float32),
                           labels=np.array([0], np.int64)))]
    path = tmp_path / "ann.pkl"
    path.write_bytes(pickle.dumps(infos))
    dataset = CustomDataset(str(path), pipeline=[], classes=("thing",), test_mode=True)
    assert len(dataset) == 1
    marker = tmp_path / "ran"
    evil = tmp_path / "evil_ann.pkl"
    evil.write_bytes(pickle.dumps([WritesMarker(marker)]))
    with pytest.raises(UnsafePickleError) as err:
        CustomDataset(str(evil), pipeline=[], classes=("thing",), test_mode=True)
    assert str(err.value).startswith(f"{evil}: refusing to load this pickle: it names ")
    assert "load_annotations of a CustomDataset subclass" in str(err.value)
    assert not marker.exists()
