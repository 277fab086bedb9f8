_base_ = 'a.py'
z = 3
