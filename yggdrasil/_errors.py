"""The one exception root of the domain package; each error knows what the HTTP boundary answers."""

from __future__ import annotations


class YggdrasilError(Exception):
    """Root of every error the domain raises on purpose."""

    status = 500
    code = "internal"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)

    default_message = "internal error"

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(YggdrasilError):
    code = "config_error"
    default_message = "invalid configuration"


class StoreError(YggdrasilError):
    code = "store_error"
    default_message = "store error"


class StoreUnavailable(StoreError):
    """The database cannot be reached; the API answers 503 and the write did not happen."""

    status = 503
    code = "store_unavailable"
    default_message = "the data store is unavailable, try again later"


class UniqueViolation(StoreError):
    """A row with that key exists already."""

    status = 409
    code = "conflict"
    default_message = "conflict"


class NotFound(YggdrasilError):
    """Nothing the principal may see has that id: nonexistent and foreign look the same."""

    status = 404
    code = "not_found"
    default_message = "not found"


class Invalid(YggdrasilError):
    status = 422
    code = "invalid"
    default_message = "invalid input"
