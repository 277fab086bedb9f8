_base_ = '../_base_/schedules/toy_1x.py'
# `_delete_` on a key the base does not have, at two depths: it must vanish all the same.
fp16 = dict(_delete_=True, loss_scale=dict(_delete_=True, init_scale=512.0))
