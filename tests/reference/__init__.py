"""Test-time references: MMDetection 2.28.2 and mmcv 1.7.2, which detlab is compared with.

detlab never imports mmdet or mmcv; only tests do, and they skip when the references are not
installed. ``make reference-deps`` (run by ``make venv`` / ``make test`` when the venv is made)
installs them into ``.venv``:

- ``mmcv==1.7.2`` from its sdist with ``--no-deps`` (so its ``opencv-python`` stays out: the venv
  has ``opencv-python-headless``), built under ``tests/reference-build-constraints.txt``
  (a setuptools that still has ``pkg_resources``), plus ``addict`` and ``yapf``. This is mmcv's
  Python code only: its compiled extension ``mmcv._ext`` is not built.
- ``mmdet==2.28.2`` from its wheel with ``--no-deps`` (it asks for nothing compiled; its
  ``mim`` extra would ask for mmcv-full), plus the pure-Python packages it imports:
  ``terminaltables``, ``scipy``, ``six`` (``numpy``, ``matplotlib``, ``pycocotools`` are detlab's
  own dependencies). The wheel ships every zoo config under ``mmdet/.mim/configs``;
  :func:`~reference.mmdet_reference.mmdet_config_dir` finds them without importing mmdet.

Two modules here make the reference usable on CPU without a compiler:

- :mod:`reference.mmcv_ext` stands in for ``mmcv._ext``: it has every function mmcv's op modules
  ask for, computes ``nms``, ``roi_align_forward``, ``deform_conv_forward`` and
  ``modulated_deform_conv_forward`` with ``torchvision.ops``, and raises ``NotImplementedError``
  naming the op for every other one (building a model calls none).
- :mod:`reference.mmdet_reference` installs that stand-in and imports mmdet
  (:func:`~reference.mmdet_reference.import_mmdet`, which skips the test when mmdet is missing),
  finds the zoo configs and builds MMDetection's models
  (:func:`~reference.mmdet_reference.build_mmdet_model`, ``build_detector(cfg.model)`` on CPU,
  or on the ``meta`` device for names and shapes only).

Tests import them as ``from reference.mmdet_reference import ...`` (``tests/`` is on the path, as
for ``conftest``). What MMDetection builds for each zoo config is also recorded in
``tests/models/zoo/`` (written by ``tests/models/zoo/make_manifest.py``), so that the zoo's
state_dict keys and shapes are checked without running MMDetection.
"""
