_base_ = 'level2.py'
model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet101')))
runner = dict(max_epochs=24)
lr_config = dict(step=[16, 22])
