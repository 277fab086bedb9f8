_base_ = ['../_base_/runtime.py', 'does_not_exist.py']
