"""The one exception root of the domain package; each error knows what the HTTP boundary answers."""

from __future__ import annotations


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one leaf of a nursery's exception group, or the group itself if there are several.

    Lets the command line and callers see ``StoreUnavailable`` rather than a group around it.
    """
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        current = pending.pop()
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        else:
            leaves.append(current)
    return leaves[0] if len(leaves) == 1 else group


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


class ListenError(YggdrasilError):
    """A listener cannot bind its address (in use, not permitted): the server does not start.
    Not a configuration error: the configuration may be right and the port taken by another
    program."""

    code = "listen_error"
    default_message = "cannot bind a listener"


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


class Forbidden(YggdrasilError):
    status = 403
    code = "forbidden"
    default_message = "not allowed"


class Unavailable(YggdrasilError):
    """A part of the server is not running right now (starting, restarting, stopping)."""

    status = 503
    code = "unavailable"
    default_message = "temporarily unavailable, try again later"


class Invalid(YggdrasilError):
    status = 422
    code = "invalid"
    default_message = "invalid input"
