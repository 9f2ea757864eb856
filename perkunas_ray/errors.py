"""The user-facing error types: each names the field, file or parameter and what was expected."""


class PerkunasError(Exception):
    """Base class for errors caused by user input (config, data, checkpoints, requests)."""


class ConfigError(PerkunasError, ValueError):
    """A config value is missing, of the wrong type or out of range."""


class DataError(PerkunasError, ValueError):
    """A corpus or token-shard file is missing, empty or disagrees with its manifest."""


class CheckpointError(PerkunasError, ValueError):
    """A run directory or checkpoint is missing, incomplete or corrupt."""
