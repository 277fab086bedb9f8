_base_ = './level1.py'
model = dict(bbox_head=dict(num_classes=3, anchor_generator=dict(ratios=[1.0])))
optimizer = dict(lr=0.005)
workflow = [('train', 1), ('val', 1)]
