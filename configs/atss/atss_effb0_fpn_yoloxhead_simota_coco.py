# A cross-family config, kept as a lesson: ATSS's detector and FPN, an EfficientNet-b0
# backbone, YOLOX's head and SimOTA assignment, each swapped in with `_delete_=True`.
#
# It builds and trains -- in MMDetection 2.28 as in detlab -- but YOLOXHead keeps its default
# strides=[8, 16, 32] and reads only the first 3 of the neck's 5 maps, while EfficientNet-b0's
# stages 4, 5, 6 sit at strides 16, 32, 32 (so the neck's maps are at 16, 32, 32, 64, 128).
# On the first two levels the head's points and box decoding then assume cells half the real
# ones' size. detlab warns about this on the first forward; the corrected config beside this one,
# atss_effb0_fpn_yoloxhead_simota_true-strides_coco.py, sets strides=[16, 32, 32] and
# num_outs=3.
_base_ = './atss_r50_fpn_1x_coco.py'
checkpoint = 'https://download.openmmlab.com/mmclassification/v0/efficientnet/efficientnet-b0_3rdparty_8xb32_in1k_20220119-a7e2a0b1.pth'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='EfficientNet',
        arch='b0',
        drop_path_rate=0.2,
        out_indices=(4, 5, 6),
        frozen_stages=0,
        norm_cfg=dict(
            type='SyncBN', requires_grad=True, eps=1e-3, momentum=0.01),
        norm_eval=False,
        init_cfg=dict(
            type='Pretrained', prefix='backbone', checkpoint=checkpoint)),
    neck=dict(
        in_channels=[112, 320, 1280],
        start_level=0),
    bbox_head=dict(
        _delete_=True,
        type='YOLOXHead',
        num_classes=64,
        in_channels=256,
        feat_channels=128),
    train_cfg=dict(
        assigner=dict(_delete_=True, type='SimOTAAssigner', center_radius=2.5)))
