"""minift.export: ``python -m minift.export --run RUN_DIR --format gguf|hf|peft`` — a run's weights for other tools.

- ``run``: ``export_run(run, fmt, dtype, out)`` — the run loaded as ``minift.eval.trained`` loads it, written by the
  one writer of each format (``minift.models.gguf_write``, ``minift.peft.save_merged`` /
  ``minift.models.save_pretrained``, ``minift.peft.export_peft``).

Importing this package imports nothing.
"""
