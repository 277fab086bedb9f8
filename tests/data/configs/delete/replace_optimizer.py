_base_ = '../chain/level1.py'
optimizer = dict(_delete_=True, type='AdamW', lr=0.0001, weight_decay=0.05)
model = dict(
    neck=dict(_delete_=True, type='PAFPN', in_channels=[512, 1024, 2048], out_channels=256,
              num_outs=5),
    bbox_head=dict(loss_bbox=dict(_delete_=True, type='GIoULoss', loss_weight=2.0)))
