"""detlab: a Jupyter-first object-detection experimentation kit with MMDetection 2.x configs.

The public API is re-exported here and imported on first use, so ``import detlab`` stays quick;
heavy packages (torch, matplotlib, pandas, pycocotools, ipywidgets, papermill) load only when a
function that needs them runs.
"""

from __future__ import annotations

from detlab._lazy import lazy_getattr

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "Config": "detlab.config",
    "ConfigDict": "detlab.config",
    "ConfigError": "detlab.config",
    "load_config": "detlab.config",
    "parse_cfg_options": "detlab.config",
    "Registry": "detlab.registry",
    "MODELS": "detlab.registry",
    "DATASETS": "detlab.registry",
    "TRANSFORMS": "detlab.registry",
    "PIPELINES": "detlab.registry",
    "HOOKS": "detlab.registry",
    "OPTIMIZERS": "detlab.registry",
    "OPTIMIZER_BUILDERS": "detlab.registry",
    "build_optimizer": "detlab.engine.optim",
    "Batch": "detlab.structures",
    "DetResult": "detlab.structures",
    "build_model": "detlab.models",
    "build_detector": "detlab.models",
    "build_dataset": "detlab.data",
    "build_dataloader": "detlab.data",
    "make_shapes_dataset": "detlab.data",
    "train": "detlab.engine.setup",
    "test": "detlab.engine.tester",
    "single_gpu_test": "detlab.engine.tester",
    "init_detector": "detlab.inference",
    "inference_detector": "detlab.inference",
    "show_result": "detlab.inference",
    "coco_evaluate": "detlab.evaluation",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
