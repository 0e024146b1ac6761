"""minift.memory: how much GPU memory does fine-tuning take, and the measurements that check it.

- ``estimate.estimate(config, Method(...), Setup(...)) -> Estimate``: every term and the peak of a step
  (``estimate.largest_batch`` / ``fits`` for a GPU size). ``Method`` is ``minift.peft.config.Method`` and
  ``Setup`` speaks ``minift.train``'s words (``max_length``, ``grad_accum``, precision ``fp32|fp16|bf16|bf16-pure``).
- ``params.model_facts``: counts, what trains and every linear, read off the model built on the meta device.
- ``activations.trace_activations``: bytes kept for backward (the symbolic tape of ``tracer.py``), replayed from
  the model's facts and its family's ``MemorySpec`` (``minift.models.registry``).
- ``saved.measure_saved``: the same, measured on real models with ``saved_tensors_hooks`` (any device).
- ``profile.profile_training``: real steps on CUDA, ``memory_allocated`` per phase vs the estimate;
  ``timeline.profile_training_cpu``: the same on CPU from the profiler's allocation events.
- ``python -m minift.memory``: the command (``__main__.py``), rendered by ``report.py``; model shapes by name
  come from ``minift.models.presets``.

Importing this package imports nothing else.
"""
