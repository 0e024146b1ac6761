"""minift.generate: ``python -m minift.generate`` — a quick look at what a decoder (or a run's weights) writes.

- ``text``: ``load_generator`` (a causal LM, a run's weights on it, its tokenizer), ``chat_prompts`` (the checkpoint's
  chat template), ``generate_text`` (prompts → continuations with ``minift.models.generate.generate``).

The generation itself lives in ``minift.models.generate``; importing this package imports nothing.
"""
