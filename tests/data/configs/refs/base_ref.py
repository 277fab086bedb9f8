_base_ = ['../_base_/datasets/toy_coco.py', '../_base_/schedules/toy_1x.py']
norm = {{_base_.img_norm_cfg}}
val_scale = '{{ _base_.test_pipeline.1.img_scale }}'
base_lr = {{_base_.optimizer.lr}}
optimizer = dict(lr=base_lr * 2)
