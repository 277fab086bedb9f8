"""Detection heads.

A dense head is its layers, its targets and its loss; everything else is shared.

What the bases give (``base_dense_head.py``, ``anchor_head.py``, ``anchor_free_head.py``)
---------------------------------------------------------------------------------------

- :class:`BaseDenseHead` -- the head contract and the shared pieces:

  - ``forward(feats)`` checks the number of levels and runs ``forward_single(x, level)`` on
    each; the raw output is a tuple of per-level map lists, one list per value
    ``forward_single`` returns (``(cls_scores, bbox_preds)``, ``(cls_scores, bbox_preds,
    centernesses)`` ...).
  - ``predict(raw, metas)`` calls ``predict_by_feat(cls_scores, bbox_preds, score_factors=None,
    *, metas)``, which runs the one post-processing function,
    :func:`~detlab.models.heads.postprocess.dense_postprocess`: class probabilities (sigmoid,
    or softmax without the background column), ``score_thr`` and ``nms_pre`` per level on the
    class probabilities, boxes decoded from the priors by ``decode_boxes``, ``min_bbox_size``,
    rescaling to the original image, score factors (sigmoid of the third raw output)
    multiplied in after the top-k as MMDetection does, ``nms`` / ``soft_nms``
    (:mod:`~detlab.models.heads.nms`), ``max_per_img`` -> :class:`~detlab.structures.DetResult`.
  - ``get_priors(maps, metas)`` -> :class:`DensePriors` (priors of all levels, their valid flags
    per image's ``pad_shape``, counts per level), from ``prior_generator`` (anchors or points).
  - ``ground_truths(targets, metas, num_images, device)`` -> one checked :class:`GroundTruth`
    (``boxes``, ``labels``, ``boxes_ignore``) per image, from the batch's ``targets`` dicts.
  - ``assign_per_image(priors, gt, *, num_level_priors, pred_scores, pred_bboxes)`` ->
    ``SamplingResult``: ``train_cfg.assigner`` then the sampler. Every assigner has one
    signature, ``assign(priors, gt_bboxes, gt_bboxes_ignore=None, gt_labels=None, *,
    num_level_priors=None, pred_scores=None, pred_bboxes=None)``, and takes what it needs, so
    ATSS (per-level counts), SimOTA or TaskAligned (predictions) come in through the config.
    MMDetection's sampling rule: a ``train_cfg.sampler`` other than ``PseudoSampler`` samples,
    unless the classification loss is a focal-type one (``sampling`` attribute).
  - ``train_cfg`` / ``test_cfg`` checked against the class's ``train_cfg_keys`` /
    ``test_cfg_keys`` (did-you-mean in errors; a head with more keys extends the tuples);
    ``init_weights()`` applies ``init_cfg``.

- :class:`AnchorHead` adds the anchor targets and loss of MMDetection's ``AnchorHead``: anchors
  inside the image (``allowed_border``), assignment with the per-level counts of those anchors
  and the detached predicted probabilities and decoded boxes, ``pos_weight``, encoded (or, with
  ``reg_decoded_bbox``, decoded) box targets (:class:`AnchorTargets`), and ``loss_cls`` +
  ``loss_bbox`` divided by the positives (plus negatives when sampling).
- :class:`AnchorFreeHead` adds MMDetection's ``AnchorFreeHead`` layers under its names --
  ``cls_convs`` / ``reg_convs`` towers (``stacked_convs``, ``conv_bias='auto'``, ``norm_cfg``,
  ``dcn_on_last_conv``), ``conv_cls`` / ``conv_reg`` -- on ``MlvlPointGenerator(strides,
  offset=0.5)`` points; ``forward_features(x)`` returns the towers' features too.

What a new head defines
-----------------------

1. ``__init__`` with explicit arguments (MMDetection's names and defaults): call the base's
   ``__init__``, build the head's own layers under MMDetection's parameter names, and end
   with ``initialize(self, self.init_cfg, load_pretrained=False)`` (the base cannot, since the
   subclass's layers come after it).
2. ``forward_single(x, level)`` returning the level's maps: ``(cls_score, bbox_pred)``, plus a
   score factor third when the head has one (FCOS/ATSS centerness, an IoU branch) -- it is
   then multiplied into the scores at test time. ``level`` picks per-level
   modules (``scales[level]``, ``strides[level]``).
3. Its targets and ``loss(raw, targets, metas)`` when they differ from :class:`AnchorHead`'s
   (an anchor-free head always has its own), built from ``get_priors``, ``ground_truths`` and,
   for assigner-based heads, ``assign_per_image``.
4. Only if needed: ``decode_boxes`` (boxes not made by ``bbox_coder.decode(priors, preds)``),
   ``predict`` (raw outputs other than ``(cls, bbox[, factor])``), ``assigner_predictions``
   (what an :class:`AnchorHead` shows its assigner), and extra ``train_cfg_keys`` /
   ``test_cfg_keys``.

Heads whose test-time rules differ from MMDetection's ``BaseDenseHead`` (PAA's score voting,
YOLOX's best class per point with the objectness inside the threshold) keep their own
``predict`` built from the pieces of :mod:`~detlab.models.heads.postprocess` and
:func:`~detlab.models.heads.nms.multiclass_nms`.
"""

from detlab.models.heads.anchor_free_head import AnchorFreeHead
from detlab.models.heads.anchor_head import AnchorHead, AnchorTargets
from detlab.models.heads.atss_head import ATSSHead
from detlab.models.heads.base_dense_head import (
    BaseDenseHead,
    DensePriors,
    GroundTruth,
    unpack_targets,
)
from detlab.models.heads.fcos_head import FCOSHead
from detlab.models.heads.nms import batched_soft_nms, multiclass_nms
from detlab.models.heads.postprocess import dense_postprocess
from detlab.models.heads.retina_head import RetinaHead

__all__ = ["AnchorFreeHead", "AnchorHead", "AnchorTargets", "BaseDenseHead", "DensePriors",
           "GroundTruth", "RetinaHead", "batched_soft_nms", "dense_postprocess",
           "multiclass_nms", "unpack_targets"]

from detlab.models.heads.gfl_head import GFLHead, Integral  # noqa: E402

__all__ += ["GFLHead", "Integral"]
__all__ += ["FCOSHead"]
__all__ += ["ATSSHead"]

from detlab.models.heads.free_anchor_retina_head import FreeAnchorRetinaHead  # noqa: E402

__all__ += ["FreeAnchorRetinaHead"]

from detlab.models.heads.tood_head import TOODHead  # noqa: E402

__all__ += ["TOODHead"]

from detlab.models.heads.fovea_head import FoveaHead  # noqa: E402

__all__ += ["FoveaHead"]

from detlab.models.heads.ssd_head import SSDHead  # noqa: E402

__all__ += ["SSDHead"]

from detlab.models.heads.yolox_head import YOLOXHead  # noqa: E402

__all__ += ["YOLOXHead"]

from detlab.models.heads.vfnet_head import VFNetHead  # noqa: E402

__all__ += ["VFNetHead"]

from detlab.models.heads.paa_head import PAAHead  # noqa: E402

__all__ += ["PAAHead"]

from detlab.models.heads.yolo_head import YOLOV3Head  # noqa: E402

__all__ += ["YOLOV3Head"]

from detlab.models.heads.yolof_head import YOLOFHead  # noqa: E402

__all__ += ["YOLOFHead"]

from detlab.models.heads.fsaf_head import FSAFHead  # noqa: E402

__all__ += ["FSAFHead"]

from detlab.models.heads.ddod_head import DDODHead  # noqa: E402

__all__ += ["DDODHead"]

from detlab.models.heads.autoassign_head import AutoAssignHead  # noqa: E402

__all__ += ["AutoAssignHead"]

from detlab.models.heads.retina_sepbn_head import RetinaSepBNHead  # noqa: E402

__all__ += ["RetinaSepBNHead"]

from detlab.models.heads.centernet_head import CenterNetHead  # noqa: E402

__all__ += ["CenterNetHead"]

from detlab.models.heads.nasfcos_head import NASFCOSHead  # noqa: E402

__all__ += ["NASFCOSHead"]

from detlab.models.heads.sabl_retina_head import SABLRetinaHead  # noqa: E402

__all__ += ["SABLRetinaHead"]

from detlab.models.heads.reppoints_head import RepPointsHead  # noqa: E402

__all__ += ["RepPointsHead"]

from detlab.models.heads.ld_head import LDHead  # noqa: E402

__all__ += ["LDHead"]

from detlab.models.heads.guided_anchor_head import GARetinaHead  # noqa: E402

__all__ += ["GARetinaHead"]

from detlab.models.heads.lad_head import LADHead  # noqa: E402

__all__ += ["LADHead"]

from detlab.models.heads.rpn_head import RPNHead  # noqa: E402

__all__ += ["RPNHead"]

from detlab.models.heads.pisa_retinanet_head import PISARetinaHead  # noqa: E402
from detlab.models.heads.pisa_ssd_head import PISASSDHead  # noqa: E402

__all__ += ["PISARetinaHead", "PISASSDHead"]

from detlab.models.heads.ascend_heads import AscendRetinaHead, AscendSSDHead  # noqa: E402

__all__ += ["AscendRetinaHead", "AscendSSDHead"]

from detlab.models.heads.cascade_rpn_head import CascadeRPNHead, StageCascadeRPNHead  # noqa: E402

__all__ += ["CascadeRPNHead", "StageCascadeRPNHead"]

from detlab.models.heads.ga_rpn_head import GARPNHead  # noqa: E402

__all__ += ["GARPNHead"]
