"""The error type for bad settings: raised before training starts, naming the setting."""

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A setting is invalid. The message names it (as ``group.key=value``) and what is valid."""
