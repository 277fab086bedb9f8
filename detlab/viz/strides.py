"""Where a detector's feature maps really are: one row per map of the neck (or backbone) with
the stride the head assumes for it and the stride it has for a given input size -- the table
behind :class:`~detlab.models.detectors.single_stage.FeatureStrideWarning`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from detlab.models.detectors.single_stage import real_stride

if TYPE_CHECKING:
    import pandas as pd


def stride_table(model: nn.Module, image_size: int | tuple[int, int]) -> pd.DataFrame:
    """One row per feature map a single-stage ``model`` gives for a blank ``image_size`` input:
    ``level``, ``map`` (rows x columns), ``head_stride`` (the stride of the head's priors on
    that level, ``None`` for a map the head does not read), ``real_stride`` (the input size
    over the map's, as a power of two) and ``agree``. Runs ``extract_feat`` without gradients,
    in eval mode, and leaves the model's mode as it was (and its stride warning unspent)."""
    import pandas as pd

    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    training = model.training
    with torch.no_grad():
        feats = model.eval().extract_feat(torch.zeros(1, 3, height, width))
    model.train(training)
    generator = model.bbox_head.prior_generator
    assumed = [sw if sw == sh else (sw, sh) for sw, sh in
               ((tuple(s) if isinstance(s, (tuple, list)) else (s, s)) for s in generator.strides)]
    rows = []
    for level, feat in enumerate(feats):
        head = assumed[level] if level < len(assumed) else None
        real = real_stride(height, feat.shape[-2])
        rows.append(dict(level=level, map=f"{feat.shape[-2]}x{feat.shape[-1]}",
                         head_stride=head, real_stride=real, agree=head == real))
    frame = pd.DataFrame(rows)
    if all(isinstance(s, int) for s in assumed):  # integers, with <NA> for unread maps
        frame["head_stride"] = frame["head_stride"].astype("Int64")
    return frame
