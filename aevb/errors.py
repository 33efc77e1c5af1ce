"""Exceptions raised by aevb. Each message says what was expected and what was found."""


class AevbError(Exception):
    """Base class of every error aevb raises on purpose."""


class DataError(AevbError, ValueError):
    """Input data of the wrong shape, type, range or provenance (e.g. a failed checksum)."""


class ConfigError(AevbError, ValueError):
    """An unknown name or an inconsistent combination of settings."""


class ObjectiveError(AevbError, ValueError):
    """A (model, guide, objective) combination whose estimate would be silently wrong."""


class TrainingDiverged(AevbError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
