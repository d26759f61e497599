"""The Typer plumbing every command group shares: the groups and error-to-exit-code mapping.

The options several commands share are in `wsop.cli.options`, the credentials servers
and `wsop token` read in `wsop.cli.credentials`.

Errors are mapped here and nowhere else: a `WsopError` becomes one line on stderr and
its exit code; anything unexpected becomes one line too (set WSOP_DEBUG=1 for the
traceback), so users never see a stack trace for a bad input.

This module is imported by every `wsop` invocation, `--version` included, so it
imports nothing heavy at the top: rich, redis and the library load when a command
needs them (tests/cli/test_cli_startup.py holds it to that).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from wsop.errors import BackendError, BackendUnavailable, WsopError

# `-1` where a user id goes: click reads it as an unknown option (see RootGroup.main)
SIGNED_NUMBER = re.compile(r"^-\d+$")


def _click_exceptions() -> tuple[type[BaseException], ...]:
    """Typer's own control-flow exceptions (it vendors click in recent versions)."""
    found: list[type[BaseException]] = [typer.Exit, typer.Abort]
    try:
        from typer._click import exceptions as vendored

        found.append(vendored.ClickException)
    except ImportError:  # older typer on upstream click
        pass
    import click

    found += [click.exceptions.Exit, click.exceptions.Abort, click.ClickException]
    return tuple(found)


PASSTHROUGH = _click_exceptions()


def print_error(message: str) -> None:
    """The one `error:` line on stderr (never wrapped: it may hold a command to copy)."""
    from wsop.cli.output import err_console

    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def fail(message: str, code: int) -> typer.Exit:
    print_error(message)
    return typer.Exit(code)


def _stdout_gone() -> typer.Exit:
    """The reader of our stdout went away (`wsop … | head`): stop quietly. stdout is
    pointed at /dev/null so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return typer.Exit(1)


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (`kill`, `timeout`, a supervisor) clean up like Ctrl-C: it raises
    KeyboardInterrupt in the main thread, so every `finally` of a command that started
    processes runs and it exits 130 "interrupted" (SIGTERM's default killed it outright,
    leaving its stack, locust and half-written files behind)."""
    signal.signal(signal.SIGTERM, _raise_interrupt)


def _raise_interrupt(*_: object) -> NoReturn:
    raise KeyboardInterrupt


def _backend_error(exc: BaseException) -> WsopError | None:
    """A redis-py error as ours (checked through sys.modules: a command that never
    imported redis cannot have raised one, and importing it here would cost every
    command ~100 ms)."""
    redis = sys.modules.get("redis")
    if redis is None:
        return None
    if isinstance(exc, redis.ConnectionError):
        return BackendUnavailable(f"lost the Redis connection: {exc}")
    if isinstance(exc, redis.RedisError):
        return BackendError(f"Redis error: {exc}")
    return None


class WsopGroup(TyperGroup):
    """A Typer group that turns library errors into exit codes (once, at the root)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except PASSTHROUGH:
            raise
        except WsopError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except BrokenPipeError:
            raise _stdout_gone() from None
        except Exception as exc:
            mapped = _backend_error(exc)
            if mapped is not None:
                raise fail(str(mapped), mapped.exit_code) from None
            if os.environ.get("WSOP_DEBUG"):
                raise
            name = type(exc).__name__
            raise fail(f"internal error ({name}): {exc} — rerun with WSOP_DEBUG=1", 1) from None


def _one_line(exc: BaseException) -> str:
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return " ".join(message.split()) + hint


def _signed_number_typo(exc: BaseException, args: list[str]) -> str | None:
    """`wsop online add --tenant acme -1`: click sees an unknown option `-1`. Where the
    command takes user ids, say what the id parser says of `-- -1`."""
    if type(exc).__name__ != "NoSuchOption":
        return None
    ctx = getattr(exc, "ctx", None)
    params = getattr(getattr(ctx, "command", None), "params", ())
    if not any(getattr(p, "name", None) == "users" for p in params):
        return None
    for arg in args:
        if SIGNED_NUMBER.match(arg):
            return f"user id {arg} is negative"
    return None


class RootGroup(WsopGroup):
    """The root also owns argument-parsing errors: one line, exit 2, no help box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from wsop.cli import helpfmt

        helpfmt.install()
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except BrokenPipeError:
            _stdout_gone()
            sys.exit(1)
        except PASSTHROUGH as exc:
            if not standalone_mode:
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":
                # rich help is already on stdout; the message left to show is empty and
                # would put a stray blank line on stderr
                if exc.format_message().strip():  # type: ignore[attr-defined]
                    exc.show()  # type: ignore[attr-defined]
                sys.exit(getattr(exc, "exit_code", 2))
            if isinstance(exc, typer.Abort) or type(exc).__name__ == "Abort":
                print("aborted", file=sys.stderr)
                sys.exit(1)
            print_error(_signed_number_typo(exc, argv) or _one_line(exc))
            sys.exit(getattr(exc, "exit_code", 2))
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


def new_app(
    help_text: str, cls: type[TyperGroup] = WsopGroup, name: str | None = None
) -> typer.Typer:
    """A command group with wsop's conventions (no pretty tracebacks, -h, no completion)."""
    return typer.Typer(
        name=name,
        help=help_text,
        cls=cls,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
