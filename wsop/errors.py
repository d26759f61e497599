"""One small error hierarchy, mapped to exit codes in exactly one place (the CLI).

Library code raises these instead of printing or exiting, so the same failure reads
the same whether it surfaces in a command, a server log or a test.
"""

from __future__ import annotations


class WsopError(Exception):
    """Base of every error a user can cause or meet; `exit_code` is what the CLI returns."""

    exit_code = 1


class UsageError(WsopError):
    """The request itself is wrong (bad flag, bad id, bad file): exit 2."""

    exit_code = 2


class InputError(UsageError):
    """A file or value the user supplied is malformed; the message names where."""


class NotFound(WsopError):
    """Something the user named does not exist (a tenant, a process)."""


class BackendUnavailable(WsopError):
    """A server we depend on (Redis, the stack, the Kubernetes API) cannot be reached."""


class BackendError(WsopError):
    """The backend answered, but with an error we cannot recover from (e.g. WRONGTYPE)."""
