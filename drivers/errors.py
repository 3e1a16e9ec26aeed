"""The storage error taxonomy, classified by what a caller should do, not by SDK type.

Every driver translates its SDK's exceptions into exactly these, in one place per driver
(a context manager around SDK calls). Nothing from boto3, google-cloud or azure leaks past
``drivers/``.

    StorageError                  base; ``retryable`` says whether trying again may help
    ├── NotFound                  the key does not exist
    ├── PreconditionFailed        a conditional write's condition did not hold
    ├── AccessDenied              credentials lack permission (never retryable)
    ├── InvalidKey                the key is not a safe relative path (never sent anywhere)
    └── TransientError            throttling, 5xx, connection reset or timeout, an answer
                                  missing what it must carry (retryable; ``retry_after``)

    ConfigError                   a driver's configuration block is wrong; names the field
"""


class StorageError(Exception):
    """A storage operation failed. ``retryable`` tells whether the same call may succeed later."""

    retryable = False


class NotFound(StorageError):
    """The object does not exist."""


class PreconditionFailed(StorageError):
    """A conditional write found the object in an unexpected state."""


class AccessDenied(StorageError):
    """The credentials in use may not perform this operation."""


class InvalidKey(StorageError, ValueError):
    """A key is empty, absolute, contains ``..``, a backslash, a NUL or another control character."""


class TransientError(StorageError):
    """Throttling, a server-side error, a broken connection, or an answer lacking what the
    protocol promises (a missing ETag or length, a body shorter than announced): worth retrying.
    ``retry_after`` is the wait in seconds the server asked for, if it said."""

    retryable = True

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ConfigError(ValueError):
    """A configuration value is wrong. ``field`` is its dotted path, ``message`` says why."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    def under(self, prefix: str) -> "ConfigError":
        """The same error with its field placed under ``prefix`` (a dotted path)."""
        field = f"{prefix}.{self.field}" if self.field else prefix
        return ConfigError(field, self.message)
