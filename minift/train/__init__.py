"""minift.train: the training engine and ``python -m minift.train``.

The pieces, one concern per module (importing this package imports none of them):

- ``config``: ``TrainConfig`` (typed, validated), ``resolve_config(argv)`` = defaults < configs/<task>.yaml <
  command-line flags; unknown keys and wrong types are errors.
- ``optim``: ``build_optimizer`` (AdamW, no decay on biases / norm weights, by structure) and ``build_scheduler``
  (linear / cosine / constant with warmup in steps or as a ratio; equal to transformers' schedules).
- ``batching``: ``BatchPlan`` — seeded, length-grouped micro-batches per epoch, sharded across torchrun processes.
- ``losses``: summed losses and target counts (token-weighted accumulation).
- ``loop``: ``fit(...)`` — the one training loop (autocast, GradScaler for fp16, accumulation equal to one big
  batch, clipping, evaluation, best checkpoint, early stopping, NaN stop, Ctrl-C checkpoint, DDP);
  ``backward_window`` is its accumulation step.
- ``checkpoint``: pickle-free atomic checkpoints (``save_checkpoint`` / ``load_checkpoint``) for exact resume.
- ``evaluate``: ``predict`` (classification, regression, tokens) and ``generate_labels`` (causal-LM).
- ``build`` / ``run``: ``train_one(config)`` wires minift.models, minift.peft and minift.data into one run folder.
- ``experiment``: ``run_seeds(config)`` — one run per seed, mean ± std tables (markdown + CSV).
- ``progress``, ``plots``, ``oom``: the rich display, PNG curves (``python -m minift.train.plots``) and the
  out-of-memory message.
"""
