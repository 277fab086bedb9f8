"""Training and testing: the loop, hooks, optimizers and schedules, logs.

How the pieces depend on each other -- one direction, no cycles, no import inside a function to
dodge one:

- Below the engine: :mod:`detlab.checkpoint` (reading and writing checkpoints) and
  :mod:`detlab.dist` (devices, process groups, seeds and random states). Models load pretrained
  weights through them without importing the engine; data samplers ask them for the rank.
- :mod:`.logging` (log files and rows), :mod:`.optim` (optimizers and their constructors) and
  :mod:`.hooks` (one module per kind of hook) stand on those. A hook knows the trainer only as the
  object it is handed; the evaluation hook is handed the function that evaluates.
- :mod:`.trainer` is the loop: counters, random states and sampler position, hooks called in order.
  It knows nothing of configs.
- :mod:`.tester` runs a model over a loader, gathers the results of all processes, evaluates once
  and saves results (its ``test()`` reads a config to build the test set and the model);
  :mod:`.loaders` turns ``data.<split>`` into loaders for both.
- :mod:`.setup` reads a training config: it validates the runtime sections, builds the model,
  loaders, optimizer and hooks (handing the evaluation hook the tester's function), and
  ``train()`` runs the trainer it built. ``detlab.train`` is that function. The trainer and the
  hooks never see a config.

Information flows one way: config -> setup -> trainer -> hooks observe.
"""

from detlab._lazy import lazy_getattr

_EXPORTS = {
    "Hook": "detlab.engine.hooks",
    "HOOKS": "detlab.registry",
    "is_module_wrapper": "detlab.engine.hooks",
    "Trainer": "detlab.engine.trainer",
    "TrainRun": "detlab.engine.trainer",
    "train": "detlab.engine.setup",
    "test": "detlab.engine.tester",
    "single_gpu_test": "detlab.engine.tester",
    "build_optimizer": "detlab.engine.optim",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
