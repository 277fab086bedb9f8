optimizer = dict(type='SGD', lr=0.01)
only_in_a = 1
