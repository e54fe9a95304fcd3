"""User-facing errors: one line that names the problem and the fix."""


class CartoonganError(Exception):
    """An error the CLI shows as a single line, without a traceback."""


class CheckpointError(CartoonganError):
    """A checkpoint file is missing, unreadable, unsafe or of the wrong layout."""


class DataError(CartoonganError):
    """A dataset is empty, unreadable or unusable."""


class ConfigError(CartoonganError):
    """A flag or recipe value is impossible."""


class TrainingDiverged(CartoonganError):
    """A loss became NaN or infinite."""
