"""XMLDataset: Pascal VOC-style xml annotations (one ``<ann_subdir>/<id>.xml`` per image), read
as MMDetection 2.x's ``XMLDataset`` reads them.

Pixel convention (MMDetection 2.x exactly): each of ``xmin ymin xmax ymax`` is read as
``int(float(text))`` (fractions are truncated) and 1 is subtracted from all four, turning VOC's
1-based pixel indices into 0-based ones; the box is ``[xmin - 1, ymin - 1, xmax - 1, ymax - 1]``
and its width ``xmax - xmin``. ``difficult`` objects, and with ``min_size`` objects narrower or
shorter than it (training only), go to ``bboxes_ignore`` / ``labels_ignore``.

Objects of other classes are skipped. When a name is not even among the dataset type's own
``CLASSES`` (for ``XMLDataset``: not among ``classes``) it is likely a typo or a foreign label, so
the skips are counted in ``skipped_objects`` (name -> count) and reported in one warning.
"""

from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from detlab.data.datasets.custom import CustomDataset, empty_ann
from detlab.registry import DATASETS

_COORDS = ("xmin", "ymin", "xmax", "ymax")


def read_id_list(path: str) -> list[str]:
    """The image ids of an ``ImageSets/Main/*.txt`` file: the first word of each non-empty
    line (VOC's per-class lists add a ``1`` / ``-1`` column)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.split()[0] for line in f if line.strip()]
    except UnicodeDecodeError as err:
        raise ValueError(f"image id list {path!r} is not UTF-8 text: {err}") from None


def parse_xml(path: str) -> ET.Element:
    """The root of an xml file, or an error naming the file and the line of a syntax error."""
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as err:
        line, column = err.position
        raise ValueError(f"annotation file {path!r} is not well-formed xml: {err.msg} "
                         f"(line {line}, column {column})") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file {path!r} does not exist (its image id is "
                                "listed in the ann_file)") from None


def _text(node: ET.Element, tag: str, path: str, what: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{path!r}: {what} has no <{tag}>")
    return child.text.strip()


def _object_box(obj: ET.Element, path: str, index: int, name: str) -> list[int]:
    """``[xmin, ymin, xmax, ymax]`` of one ``<object>`` as MMDetection reads it (truncated to
    int, before the -1), or an error naming the file and the object."""
    what = f"object {index} ({name!r})"
    box = obj.find("bndbox")
    if box is None:
        raise ValueError(f"{path!r}: {what} has no <bndbox>")
    try:
        coords = [int(float(_text(box, tag, path, what))) for tag in _COORDS]
    except ValueError as err:
        if "has no" in str(err):
            raise
        raise ValueError(f"{path!r}: {what} has a <bndbox> value that is not a number "
                         f"({err})") from None
    if coords[2] < coords[0] or coords[3] < coords[1]:
        raise ValueError(f"{path!r}: {what} has xmax < xmin or ymax < ymin: {coords} "
                         "(<bndbox> holds xmin, ymin, xmax, ymax)")
    return coords


def _image_size(root: ET.Element, image_path: str) -> tuple[int, int]:
    """``(width, height)`` from ``<size>``, else from the image file's header."""
    size = root.find("size")
    if size is not None:
        try:
            width, height = int(float(size.findtext("width"))), int(float(
                size.findtext("height")))
            if width > 0 and height > 0:
                return width, height
        except (TypeError, ValueError):
            pass  # an empty or missing <size> happens; the image itself tells
    try:
        with Image.open(image_path) as image:
            return image.size
    except (FileNotFoundError, OSError) as err:
        raise ValueError(f"the xml of {image_path!r} has no usable <size>, and the image cannot "
                         f"be read for it: {err}") from None


@DATASETS.register_module()
class XMLDataset(CustomDataset):
    """A VOC-style xml dataset with classes of its own.

    Args:
        ann_file: the images to use: a text file of image ids, one a line (VOC's
            ``ImageSets/Main/trainval.txt``), or a folder of ``.xml`` files (every one in it,
            sorted by name; the xml files are then read from that folder).
        pipeline: transforms run on each sample.
        classes: the class names (a list or a text file of one name a line); required unless
            the subclass has ``CLASSES``. Label ``k`` is ``classes[k]``.
        img_prefix: the folder holding ``img_subdir`` and ``ann_subdir`` (e.g. ``VOC2007/``).
        img_subdir: folder of the images under ``img_prefix``. An image's name is
            ``<id><ext>``, ``ext`` being that of the xml's ``<filename>`` (``.jpg`` without one).
        ann_subdir: folder of the xml files under ``img_prefix``.
        data_root, seg_prefix, proposal_file, test_mode, filter_empty_gt: as
            :class:`CustomDataset` (``filter_empty_gt`` keeps images with only difficult
            objects, as MMDetection).
        min_size: at training time, objects whose width or height (``xmax - xmin``) is under
            it are ignored.

    See the module docstring for the pixel convention and for unknown class names.
    """

    def __init__(self, ann_file: str, pipeline: Sequence[Mapping | Callable],
                 classes: str | Sequence[str] | None = None, img_prefix: str = "",
                 img_subdir: str = "JPEGImages", ann_subdir: str = "Annotations",
                 data_root: str | None = None, seg_prefix: str | None = None,
                 proposal_file: str | None = None, test_mode: bool = False,
                 filter_empty_gt: bool = True, min_size: int | None = None) -> None:
        if classes is None and self.CLASSES is None:
            raise ValueError(f"{type(self).__name__} needs classes=[...] (the names used in the "
                             "xml <name> tags to train on)")
        self.img_subdir = img_subdir
        self.ann_subdir = ann_subdir
        self.min_size = min_size
        self.skipped_objects: dict[str, int] = {}
        super().__init__(ann_file, pipeline, classes=classes, data_root=data_root,
                         img_prefix=img_prefix, seg_prefix=seg_prefix,
                         proposal_file=proposal_file, test_mode=test_mode,
                         filter_empty_gt=filter_empty_gt)

    # ---- reading ---------------------------------------------------------------------------

    def _xml_sources(self, ann_file: str) -> tuple[list[str], str]:
        """The image ids and the folder of their xml files."""
        if os.path.isdir(ann_file):
            ids = sorted(os.path.splitext(n)[0] for n in os.listdir(ann_file)
                         if n.lower().endswith(".xml"))
            return ids, ann_file
        return read_id_list(ann_file), os.path.join(self.img_prefix or "", self.ann_subdir)

    def load_annotations(self, ann_file: str) -> list[dict]:
        """Parse the xml of every listed image once: image dicts with ``id`` (the image id),
        ``filename`` (``img_subdir/<id><ext>``), ``width``, ``height``, ``ann``."""
        ids, xml_dir = self._xml_sources(ann_file)
        self.xml_dir = xml_dir
        self.cat2label = {name: i for i, name in enumerate(self.CLASSES)}
        # names the type itself knows (VOC's 20) are skipped quietly: that is a chosen subset
        self._known_names = set(type(self).CLASSES or self.CLASSES)
        skipped: Counter = Counter()
        where = {}
        infos = []
        for img_id in ids:
            path = os.path.join(xml_dir, f"{img_id}.xml")
            info, unknown = self._parse_image(img_id, path)
            infos.append(info)
            skipped.update(unknown)
            for name in unknown:
                where.setdefault(name, path)
        self._report_unknown(skipped, where)
        return infos

    def _parse_image(self, img_id: str, path: str) -> tuple[dict, list[str]]:
        """The image dict of one xml file, and the unexpected class names it holds."""
        root = parse_xml(path)
        ext = os.path.splitext(root.findtext("filename") or "")[1] or ".jpg"
        filename = os.path.join(self.img_subdir, f"{img_id}{ext}")
        width, height = _image_size(root, os.path.join(self.img_prefix or "", filename))
        ann, unknown = self._parse_objects(root, path)
        return dict(id=img_id, filename=filename, width=width, height=height, ann=ann), unknown

    def _parse_objects(self, root: ET.Element, path: str) -> tuple[dict, list[str]]:
        """``ann`` of one image (MMDetection's pixel convention, see the module docstring) and
        the names of skipped objects that are not among the type's classes either."""
        boxes, labels, ignored, unknown = [], [], [], []
        for index, obj in enumerate(root.findall("object")):
            name = _text(obj, "name", path, f"object {index}")
            if name not in self.cat2label:
                if name not in self._known_names:
                    unknown.append(name)
                continue
            boxes.append(_object_box(obj, path, index, name))
            labels.append(self.cat2label[name])
            ignored.append(self._is_ignored(obj, boxes[-1]))
        if not boxes:
            return empty_ann(), unknown
        boxes_arr = np.asarray(boxes, dtype=np.float32) - 1  # 1-based VOC pixels -> 0-based
        labels_arr = np.asarray(labels, dtype=np.int64)
        ignored_arr = np.asarray(ignored, dtype=bool)
        return dict(bboxes=boxes_arr[~ignored_arr], labels=labels_arr[~ignored_arr],
                    bboxes_ignore=boxes_arr[ignored_arr],
                    labels_ignore=labels_arr[ignored_arr]), unknown

    def _is_ignored(self, obj: ET.Element, box: list[int]) -> bool:
        """Difficult, or (training with ``min_size``) smaller than ``min_size``."""
        difficult = obj.findtext("difficult")
        if difficult is not None and difficult.strip() and int(float(difficult)):
            return True
        if self.min_size and not self.test_mode:
            return box[2] - box[0] < self.min_size or box[3] - box[1] < self.min_size
        return False

    def _report_unknown(self, skipped: Counter, where: dict[str, str]) -> None:
        self.skipped_objects = dict(skipped)
        if not skipped:
            return
        names = ", ".join(f"{name!r} x{count} (e.g. {where[name]!r})"
                          for name, count in skipped.most_common(5))
        more = f" and {len(skipped) - 5} more names" if len(skipped) > 5 else ""
        warnings.warn(f"{type(self).__name__}: {sum(skipped.values())} objects with class names "
                  f"that are not among the classes were skipped: {names}{more}. Add them to "
                  "`classes` (or fix the <name> tags) if they should be trained on; the counts "
                  "are in dataset.skipped_objects", UserWarning, stacklevel=5)

    # ---- per image ---------------------------------------------------------------------------

    def get_cat_ids(self, idx: int) -> list[int]:
        """The labels of the objects of image ``idx``, difficult ones included (as
        MMDetection counts them for class-balanced sampling)."""
        ann = self.get_ann_info(idx)
        return np.concatenate([ann["labels"], ann["labels_ignore"]]).astype(np.int64).tolist()

    def xml_path(self, idx: int) -> str:
        """The xml file of image ``idx``."""
        return os.path.join(self.xml_dir, f"{self.data_infos[idx]['id']}.xml")

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", img_prefix={self.img_prefix!r})"
