"""minift.memory: how much GPU memory does fine-tuning take, and the measurements that check it.

- ``estimate.estimate(config, Method(...), Setup(...)) -> Estimate``: every term and the peak of a step
  (``estimate.largest_batch`` / ``fits`` for a GPU size); ``presets.resolve_model`` / ``shape_for_params``.
- ``activations.trace_activations``: bytes kept for backward (the symbolic tape of ``tracer.py``).
- ``saved.measure_saved``: the same, measured on real models with ``saved_tensors_hooks`` (any device).
- ``profile.profile_training``: real steps on CUDA, ``memory_allocated`` per phase vs the estimate;
  ``timeline.profile_training_cpu``: the same on CPU from the profiler's allocation events.
- ``python -m minift.memory``: the command (``__main__.py``), rendered by ``report.py``.

Importing this package imports nothing else.
"""
