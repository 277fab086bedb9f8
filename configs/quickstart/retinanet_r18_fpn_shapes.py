# RetinaNet sized for a CPU, trained from scratch on the generated shapes dataset
# (`detlab make-shapes OUT --image-size 192`): a ResNet-18, a 3-level FPN of 128 channels, a
# GroupNorm head (MMDetection's RetinaHead takes norm_cfg), anchors sized to the shapes (about
# 15 to 85 pixels on 192-pixel images), AdamW. Six epochs of 600 images take about four minutes
# on two CPU cores.
_base_ = [
    '../_base_/models/retinanet_r50_fpn.py',
    '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/schedule_1x.py', '../_base_/default_runtime.py'
]
model = dict(
    backbone=dict(
        depth=18,
        out_indices=(1, 2, 3),
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=None),
    neck=dict(
        in_channels=[128, 256, 512],
        out_channels=128,
        start_level=0,
        add_extra_convs=False,
        num_outs=3),
    bbox_head=dict(
        num_classes=3,
        in_channels=128,
        feat_channels=128,
        stacked_convs=2,
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
        anchor_generator=dict(
            octave_base_scale=3,
            scales_per_octave=2,
            ratios=[1.0],
            strides=[8, 16, 32])))
dataset_type = 'CocoDataset'
data_root = 'data/shapes/'
classes = ('circle', 'square', 'triangle')
img_norm_cfg = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', img_scale=(192, 192), keep_ratio=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=(192, 192),
        flip=False,
        transforms=[
            dict(type='Resize', keep_ratio=True),
            dict(type='RandomFlip'),
            dict(type='Normalize', **img_norm_cfg),
            dict(type='Pad', size_divisor=32),
            dict(type='ImageToTensor', keys=['img']),
            dict(type='Collect', keys=['img']),
        ])
]
data = dict(
    samples_per_gpu=8,
    workers_per_gpu=1,
    train=dict(
        type=dataset_type,
        data_root=data_root,
        classes=classes,
        ann_file='annotations/instances_train.json',
        img_prefix='train/',
        pipeline=train_pipeline),
    val=dict(
        type=dataset_type,
        data_root=data_root,
        classes=classes,
        ann_file='annotations/instances_val.json',
        img_prefix='val/',
        pipeline=test_pipeline),
    test=dict(
        type=dataset_type,
        data_root=data_root,
        classes=classes,
        ann_file='annotations/instances_val.json',
        img_prefix='val/',
        pipeline=test_pipeline))
optimizer = dict(
    _delete_=True, type='AdamW', lr=0.001, weight_decay=0.05,
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
optimizer_config = dict(grad_clip=dict(max_norm=10, norm_type=2))
lr_config = dict(warmup_iters=100, warmup_ratio=0.01, step=[5])
runner = dict(type='EpochBasedRunner', max_epochs=6)
checkpoint_config = dict(interval=2)
log_config = dict(interval=25)
evaluation = dict(interval=2, metric='bbox')
