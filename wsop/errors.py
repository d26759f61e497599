"""One small error hierarchy, mapped to exit codes in exactly one place (the CLI).

Library code raises these instead of printing or exiting, so the same failure reads
the same whether it surfaces in a command, a server log or a test. One condition, one
class, one exit code — wherever it is raised::

    WsopError (exit 1)                      anything a user can cause or meet
    ├── UsageError (exit 2)                 the request itself is wrong
    │   └── InputError                      a file or value supplied is malformed
    ├── NotFound                            a tenant (or another named thing) is not there
    ├── BackendUnavailable                  Redis, the stack, the API cannot be reached
    ├── BackendError                        it answered, with an error we cannot recover from
    ├── StackNotRunning (wsop.local.paths)  "no local stack running": every command alike
    ├── AdminUnreachable (wsop.adminclient) a server's admin endpoint did not answer
    ├── AuthError (wsop.auth)               a client credential refused: HTTP 401…
    │   └── BadRequest                      …or 400 when the request is malformed
    ├── KeyChoiceError (wsop.jwtkeys)       no configured key may verify this token
    ├── ProtocolError (wsop.protocol)       a client frame refused: an error frame
    └── PeerFormatError (wsop.sidecar.peer_codec)  a peer's batch is not one
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
