"""minift.eval: test a model without training, and the run-reading pieces the inference commands share.

- ``python -m minift.eval --task T --model M [--adapter RUN_DIR]``: the task's test metrics (generated labels for
  causal-LM tasks) in the training summary's table and a ``summary.json`` of the same shape, in a new folder;
- ``trained``: find a run's weights (``RUN_DIR`` or ``RUN_DIR/best``) and load them onto a fresh base model, as
  ``python -m minift.eval``, ``minift.generate`` and ``minift.export`` do;
- ``config``: the command's flags, ``python -m minift.train``'s less the training-only ones;
- ``run``: ``evaluate_run(config, trained)``; ``cli``: one-line user errors, exit 2, ``--debug`` for tracebacks.

Importing this package imports none of them.
"""
