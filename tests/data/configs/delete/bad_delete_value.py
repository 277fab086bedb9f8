_base_ = '../_base_/schedules/toy_1x.py'
optimizer = dict(_delete_='yes', type='Adam', lr=0.001)
