import os
from math import pi


def helper(x):
    return 2 * x


class NotAKey:
    pass


_scale = 2
img_scale = (helper(_scale) * 100, 200)
path = os.path.join('a', 'b')
angle = round(pi, 2)
