"""A stand-in for mmcv 1.7's compiled extension ``mmcv._ext``, so that mmcv's Python sources
(``mmcv.ops``) and MMDetection 2.28 import and build models without a compiler.

mmcv's ``mmcv/utils/ext_loader.py`` imports ``mmcv._ext`` and asserts that every function an op
module asks for exists (``load_ext('_ext', ['nms', 'softnms', ...])``). This module has every one
of those names (:data:`OPS`, read from mmcv 1.7.2's sources). A few are computed with
``torchvision.ops``, which is what the reference needs to run RetinaNet-like and two-stage
detectors on CPU:

- ``nms`` -- ``torchvision.ops.nms`` (mmcv's legacy ``offset=1`` boxes by widening them a pixel);
- ``roi_align_forward`` -- ``torchvision.ops.roi_align`` (average pooling; mmcv's ``max`` mode
  has no torchvision counterpart);
- ``deform_conv_forward`` / ``modulated_deform_conv_forward`` -- ``torchvision.ops.deform_conv2d``
  (same offset layout: ``(dy, dx)`` pairs per kernel position, per offset group).

Every other op raises ``NotImplementedError`` naming itself when called -- building a model never
calls one. :func:`install` puts this module in ``sys.modules`` as ``mmcv._ext``.
"""

from __future__ import annotations

import sys
import types

import torch

# Every name mmcv 1.7.2's op modules ask ``load_ext('_ext', [...])`` for.
OPS = (
    "active_rotated_filter_backward", "active_rotated_filter_forward",
    "assign_score_withk_backward", "assign_score_withk_forward", "ball_query_forward",
    "bbox_overlaps", "border_align_backward", "border_align_forward", "box_iou_quadri",
    "box_iou_rotated", "carafe_backward", "carafe_forward", "carafe_naive_backward",
    "carafe_naive_forward", "chamfer_distance_backward", "chamfer_distance_forward",
    "contour_expand", "convex_giou", "convex_iou", "correlation_backward", "correlation_forward",
    "deform_conv_backward_input", "deform_conv_backward_parameters", "deform_conv_forward",
    "deform_roi_pool_backward", "deform_roi_pool_forward",
    "diff_iou_rotated_sort_vertices_forward", "dynamic_point_to_voxel_backward",
    "dynamic_point_to_voxel_forward", "dynamic_voxelize_forward",
    "furthest_point_sampling_forward", "furthest_point_sampling_with_dist_forward",
    "fused_bias_leakyrelu", "fused_indice_conv_forward", "gather_points_backward",
    "gather_points_forward", "get_compiler_version", "get_compiling_cuda_version",
    "get_indice_pairs_2d_backward", "get_indice_pairs_2d_forward", "get_indice_pairs_3d_backward",
    "get_indice_pairs_3d_forward", "get_indice_pairs_4d_forward", "group_points_backward",
    "group_points_forward", "hard_voxelize_forward", "indice_conv_backward",
    "indice_conv_forward", "indice_maxpool_backward", "indice_maxpool_forward",
    "iou3d_boxes_overlap_bev_forward", "iou3d_nms3d_forward", "iou3d_nms3d_normal_forward",
    "knn_forward", "masked_col2im_forward", "masked_im2col_forward", "min_area_polygons",
    "modulated_deform_conv_backward", "modulated_deform_conv_forward", "ms_deform_attn_backward",
    "ms_deform_attn_forward", "nms", "nms_match", "nms_quadri", "nms_rotated", "pixel_group",
    "points_in_boxes_all_forward", "points_in_boxes_cpu_forward", "points_in_boxes_part_forward",
    "points_in_polygons_forward", "prroi_pool_backward", "prroi_pool_coor_backward",
    "prroi_pool_forward", "psamask_backward", "psamask_forward", "riroi_align_rotated_backward",
    "riroi_align_rotated_forward", "roi_align_backward", "roi_align_forward",
    "roi_align_rotated_backward", "roi_align_rotated_forward", "roi_pool_backward",
    "roi_pool_forward", "roiaware_pool3d_backward", "roiaware_pool3d_forward",
    "roipoint_pool3d_forward", "rotated_feature_align_backward", "rotated_feature_align_forward",
    "sigmoid_focal_loss_backward", "sigmoid_focal_loss_forward", "softmax_focal_loss_backward",
    "softmax_focal_loss_forward", "softnms", "stack_ball_query_forward",
    "stack_group_points_backward", "stack_group_points_forward", "sync_bn_backward_data",
    "sync_bn_backward_param", "sync_bn_forward_mean", "sync_bn_forward_output",
    "sync_bn_forward_var", "three_interpolate_backward", "three_interpolate_forward",
    "three_nn_forward", "tin_shift_backward", "tin_shift_forward", "upfirdn2d",
)


def nms(bboxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
        offset: int = 0) -> torch.Tensor:
    """Indices kept by NMS, by decreasing score. ``bboxes (Tensor[N, 4], xyxy)``; ``offset=1``
    is mmcv's legacy pixel convention (width ``x2 - x1 + 1``), the same as widening by 1."""
    from torchvision.ops import nms as tv_nms

    if offset:
        bboxes = bboxes.clone()
        bboxes[:, 2:] += offset
    return tv_nms(bboxes, scores, float(iou_threshold))


def roi_align_forward(input: torch.Tensor, rois: torch.Tensor, output: torch.Tensor,
                      argmax_y: torch.Tensor, argmax_x: torch.Tensor, aligned_height: int,
                      aligned_width: int, spatial_scale: float, sampling_ratio: int,
                      pool_mode: int, aligned: bool) -> None:
    """RoIAlign into ``output (Tensor[K, C, aligned_height, aligned_width])``, in place.
    ``rois (Tensor[K, 5])`` are ``(batch index, x1, y1, x2, y2)``; ``pool_mode`` 1 is average
    (mmcv's default), 0 is max, which torchvision does not have."""
    from torchvision.ops import roi_align

    if pool_mode != 1:
        raise NotImplementedError("roi_align_forward with pool_mode='max' (the mmcv._ext "
                                  "stand-in computes the average mode only)")
    output.copy_(roi_align(input, rois, (aligned_height, aligned_width),
                           spatial_scale=spatial_scale, sampling_ratio=sampling_ratio,
                           aligned=bool(aligned)))


def deform_conv_forward(input: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor,
                        output: torch.Tensor, columns: torch.Tensor, ones: torch.Tensor, *,
                        kW: int, kH: int, dW: int, dH: int, padW: int, padH: int,
                        dilationW: int, dilationH: int, group: int, deformable_group: int,
                        im2col_step: int) -> None:
    """Deformable convolution (v1) into ``output``, in place; torchvision infers the groups and
    offset groups from the shapes of ``weight`` and ``offset``."""
    from torchvision.ops import deform_conv2d

    output.copy_(deform_conv2d(input, offset, weight, stride=(dH, dW), padding=(padH, padW),
                               dilation=(dilationH, dilationW)))


def modulated_deform_conv_forward(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                                  ones: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
                                  output: torch.Tensor, columns: torch.Tensor, *,
                                  kernel_h: int, kernel_w: int, stride_h: int, stride_w: int,
                                  pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
                                  group: int, deformable_group: int, with_bias: bool) -> None:
    """Modulated deformable convolution (DCNv2) into ``output``, in place."""
    from torchvision.ops import deform_conv2d

    output.copy_(deform_conv2d(input, offset, weight, bias=bias if with_bias else None,
                               stride=(stride_h, stride_w), padding=(pad_h, pad_w),
                               dilation=(dilation_h, dilation_w), mask=mask))


COMPUTED = ("nms", "roi_align_forward", "deform_conv_forward", "modulated_deform_conv_forward")


def _not_implemented(name: str):
    def op(*args, **kwargs):
        raise NotImplementedError(
            f"mmcv._ext.{name} is not available: the test-time stand-in for mmcv's compiled "
            f"extension (tests/reference/mmcv_ext.py) computes only {', '.join(COMPUTED)}")

    op.__name__ = op.__qualname__ = name
    return op


for _name in OPS:
    if _name not in globals():
        globals()[_name] = _not_implemented(_name)
del _name


def install() -> types.ModuleType:
    """Make ``import mmcv._ext`` find this module (idempotent); returns it."""
    import mmcv

    module = sys.modules.setdefault("mmcv._ext", sys.modules[__name__])
    mmcv._ext = module  # what a real import of the submodule would bind
    return module
