_base_ = 'b.py'
x = 1
