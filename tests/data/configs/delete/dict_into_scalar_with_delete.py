_base_ = '../_base_/runtime.py'
log_level = dict(_delete_=True, level='INFO')
