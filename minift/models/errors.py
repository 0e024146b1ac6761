"""Errors raised while reading configs and checkpoints.

Every error is a ``ModelLoadError`` (itself a ``ValueError``) whose message names the file or key at fault
and says what to do about it.
"""


class ModelLoadError(ValueError):
    """A model folder, config or checkpoint that cannot be turned into a minift model."""


class ConfigError(ModelLoadError):
    """A ``config.json`` (or config dict) that is malformed, unsupported or inconsistent."""


class CheckpointError(ModelLoadError):
    """Checkpoint tensors that are unreadable, missing, unexpected or of the wrong shape."""
