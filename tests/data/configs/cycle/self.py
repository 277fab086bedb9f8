_base_ = './self.py'
x = 1
