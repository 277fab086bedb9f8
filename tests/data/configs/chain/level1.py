_base_ = [
    '../_base_/models/toy_retinanet.py', '../_base_/datasets/toy_coco.py',
    '../_base_/schedules/toy_1x.py', '../_base_/runtime.py'
]
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001)
