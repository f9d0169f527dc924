"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class SlmError(Exception):
    """A problem the user can fix; the message names the file/option and the fix."""


class ConfigError(SlmError):
    """A recipe key, value or type is wrong."""


class DataError(SlmError):
    """A corpus, shard or tokenizer file is missing or malformed."""


class CheckpointError(SlmError):
    """A run folder or checkpoint is missing, truncated or does not match."""


class TrainingError(SlmError):
    """Training cannot go on (e.g. the loss stayed NaN/inf); the last good checkpoint is kept."""


class ExportError(SlmError):
    """A model or folder cannot be converted to or from another format (e.g. Hugging Face GPT-2)."""


class ServeError(SlmError):
    """`slm serve` cannot start: a missing extra, an address in use."""


class WriteError(SlmError):
    """A file could not be written (disk full, no permission); the previous version is intact."""


class ReadError(DataError):
    """A file could not be read (I/O error, permission denied): named, and nothing written from it."""
