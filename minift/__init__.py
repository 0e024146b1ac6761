"""minift: a hand-written, pure-PyTorch fine-tuning engine.

Importing minift does nothing but define names: no prints, downloads or global state.
Sub-packages: ``minift.models``, ``minift.peft``, ``minift.data``, ``minift.train``, ``minift.memory``.
"""

__version__ = "0.1.0"
