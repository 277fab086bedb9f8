_base_ = 'c.py'
y = 2
