"""minift.train: the training engine and ``python -m minift.train``.

The pieces, one concern per module (importing this package imports none of them):

- ``config``: ``TrainConfig`` (typed, validated), carrying each method's own config from ``minift.peft.config``
  (``lora``, ``adapter``, ``prompt``); ``config.method_spec`` is the run's ``Method``.
- ``flags``: ``resolve_config(argv)`` = defaults < configs/<task>.yaml < command-line flags (the method options'
  flags generated from the peft dataclasses); ``--resume`` with the run's saved config.
- ``build``: the device, the task, the model with its method, the tokenizer and the encoded splits of a config.
- ``batching``: ``BatchPlan`` — seeded, length-grouped micro-batches per epoch, sharded across torchrun
  processes; ``eval_batches``.
- ``step``: one optimizer step — ``backward_window`` (autocast, token-weighted accumulation equal to one big
  batch, one DDP all-reduce) and ``optimizer_step`` (GradScaler for fp16, clipping, schedule).
- ``recipe``: ``Recipe`` — ``setup()`` / ``train()`` / ``finish()``: the one training loop, read top to bottom
  (evaluation, best weights, early stopping, NaN stop, Ctrl-C checkpoint); ``train_one(config)``.
- ``evaluate``: a model's metrics on a split — ``predict`` (classification, regression, tokens) and
  ``generate_labels`` (causal-LM, by greedy generation).
- ``checkpoint``: pickle-free atomic checkpoints for exact resume, and the best weights in their final format.
- ``runfolder``: the run folder's layout and files; ``distributed``: the torchrun collectives;
  ``interrupt``: Ctrl-C as a stop request.
- ``experiment``: ``run_seeds(config)`` — one run per seed, mean ± std tables (markdown + CSV).
- ``progress``, ``oom``: the rich display and the out-of-memory message. Curves are drawn by ``minift.plots``
  (``python -m minift.plots RUN_DIR``).

Below this package: ``minift.optim`` (AdamW groups, schedules) and ``minift.losses`` (summed losses).
"""
