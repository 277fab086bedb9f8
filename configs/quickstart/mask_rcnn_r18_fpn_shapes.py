# Mask R-CNN sized for a CPU, trained from scratch on the generated shapes dataset, whose
# annotations carry each shape's outline polygon (`detlab make-shapes OUT --image-size 192`):
# a ResNet-18, a 5-level FPN of 64 channels, anchors sized to the shapes (16 to 256 pixels), a
# small RoI head (256-wide box FCs, a 2-conv mask head), AdamW. Evaluated on boxes and masks.
_base_ = [
    '../_base_/models/mask_rcnn_r50_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x.py', '../_base_/default_runtime.py'
]
model = dict(
    backbone=dict(
        depth=18,
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=None),
    neck=dict(
        in_channels=[64, 128, 256, 512],
        out_channels=64),
    rpn_head=dict(
        in_channels=64,
        feat_channels=64,
        anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(
            in_channels=64,
            fc_out_channels=256,
            num_classes=3),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(
            num_convs=2,
            in_channels=64,
            conv_out_channels=64,
            num_classes=3)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=300),
        rcnn=dict(max_per_img=50)))
dataset_type = 'CocoDataset'
data_root = 'data/shapes/'
classes = ('circle', 'square', 'triangle')
img_norm_cfg = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', img_scale=(192, 192), keep_ratio=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks']),
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
evaluation = dict(interval=2, metric=['bbox', 'segm'])
