_base_ = ['./base.json', './base.yaml']
optimizer = dict(lr=0.01)
model = dict(bbox_head=dict(num_classes=3))
