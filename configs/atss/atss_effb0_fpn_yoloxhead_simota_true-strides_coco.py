# atss_effb0_fpn_yoloxhead_simota_coco.py with the head's strides matching its feature maps:
# EfficientNet-b0's stages 4, 5, 6 are at strides 16, 32, 32, FPN keeps them (num_outs=3, no
# extra levels), and YOLOXHead's points are laid out at the same strides.
_base_ = './atss_effb0_fpn_yoloxhead_simota_coco.py'
model = dict(
    neck=dict(num_outs=3),
    bbox_head=dict(strides=[16, 32, 32]))
