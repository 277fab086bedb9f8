_base_ = '../_base_/runtime.py'
log_level = dict(level='INFO')
