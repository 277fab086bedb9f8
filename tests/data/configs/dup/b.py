optimizer = dict(type='Adam', lr=0.001)
only_in_b = 2
