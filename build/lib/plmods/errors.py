"""The error type for bad settings: raised before training starts, naming the setting."""

__all__ = ["ConfigError", "require"]


class ConfigError(ValueError):
    """A setting is invalid. The message names it (as ``group.key=value``) and what is valid."""


def require(ok: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``ok``: one line per validated setting."""
    if not ok:
        raise ConfigError(message)
