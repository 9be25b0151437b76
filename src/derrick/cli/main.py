"""The ``derrick`` command: a thin layer over the library.

Data goes to stdout, messages and progress to stderr.  Every error derrick
knows of is printed as one line ``derrick: error: …`` with a non-zero exit.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
from collections.abc import Iterator
from typing import Any

import click

from derrick import __version__
from derrick.cli.common import Options, connection_options, emit_json, format_option
from derrick.cli.errors import error_text
from derrick.cli.groups import COMMANDS, GROUPS, LazyGroup
from derrick.errors import DerrickError, UsageError


class _Interrupted(Exception):
    """The user interrupted the command (Ctrl-C).

    Not a :class:`KeyboardInterrupt`, which click answers with a blank line of its own
    before :func:`main` can say ``derrick: interrupted``.
    """


@contextlib.contextmanager
def _interrupt_is_final() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        raise _Interrupted() from None


class _OutputClosed(Exception):
    """Standard output (or error) is a pipe whose reader has gone, as in ``derrick … | head``.

    Not an :class:`OSError`, so click passes it on instead of exiting with status 1.
    """


@contextlib.contextmanager
def _closed_output_is_final() -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise
        raise _OutputClosed() from e


class _Cli(LazyGroup):
    """The top command: a reader that stops early ends the run quietly (see :func:`main`)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _closed_output_is_final(), _interrupt_is_final():  # --help, --version
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _closed_output_is_final(), _interrupt_is_final():
            return super().invoke(ctx)


class _NoOutput(io.TextIOBase):
    """Standard output for a process started without one: writing to it is an error
    (Python would make it None, and data would be dropped, or fail with a traceback)."""

    def write(self, s: str) -> int:
        raise UsageError(
            "standard output is closed, and this command writes to it",
            hint="give it somewhere to go (>/dev/null to discard it)",
        )

    @property
    def buffer(self) -> _NoOutput:  # binary writes (archives, blobs) fail the same way
        return self

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        raise OSError(errno.EBADF, "standard output is closed")


def _silence_output() -> None:
    """Point stdout and stderr at /dev/null once their reader has gone.

    What is still buffered is then flushed there at exit, instead of failing
    with "Exception ignored … BrokenPipeError" on stderr.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # no file descriptor, or closed
                os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


@click.group(cls=_Cli, lazy=COMMANDS[""], context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="derrick")
def cli() -> None:
    """derrick: pull, push, copy and inspect container images over the registry API.

    \b
    Examples:
      derrick tag ls localhost:5000/team/app
      derrick image inspect docker.io/library/alpine:3.20
      derrick image pull alpine:3.20 -o alpine.tar
    """


@cli.command("login")
@click.argument("registry")
@format_option()
@connection_options
def login(registry: str, fmt: str, opts: Options) -> None:
    """Check credentials with REGISTRY and save them in Docker's config.json.

    They are saved only once the registry (or its token service) has been sent them
    and accepted them; over plain http that needs --insecure.

    \b
    Example:
      echo "$TOKEN" | derrick login localhost:5000 -u ci --password-stdin
    """
    from derrick.auth.credentials import Credential, CredentialStore

    reg = _login_registry(registry)
    if opts.username is None:
        opts.username = _ask("Username", "a user name", secret=False)
    if not opts.password_stdin:
        opts._password = _ask("Password", "a password", secret=True)
        opts.password_stdin = True
    with opts.client(reg) as client:
        client.check_login(reg)
    path = CredentialStore().store(
        reg, Credential(username=opts.username, password=opts.password())
    )
    if fmt == "json":
        emit_json({"registry": str(reg), "saved": str(path)})
    else:
        click.echo(f"Login succeeded for {reg} (saved in {path})", err=True)


def _login_registry(value: str) -> str:
    """The registry ``login`` and ``logout`` name: ``host[:port]``, or a URL of it as
    ``docker login`` takes (``https://registry.example:5000/``,
    ``https://index.docker.io/v1/``): its scheme and path are left out (the scheme does
    not choose plain http; ``--insecure`` does)."""
    from derrick.reference import parse_registry

    scheme, sep, rest = value.partition("://")
    if sep and scheme.lower() in ("http", "https") and rest:
        value = rest.split("/", 1)[0]
    return parse_registry(value)


def _ask(prompt: str, what: str, *, secret: bool) -> str:
    """``what``, asked for on the terminal (without echo when ``secret``).

    Without a terminal to ask on, or at the end of its input (Ctrl-D), or given nothing,
    a :class:`UsageError` says which options give it instead.
    """
    flags = "--password-stdin" if secret else "--username and --password-stdin"
    if not sys.stdin.isatty():
        raise UsageError(
            f"login needs {what}, and standard input is not a terminal to ask for it on",
            hint=f"pass {flags} (the password goes on standard input)",
        )
    try:
        if secret:
            import getpass

            value = getpass.getpass(f"{prompt}: ", stream=sys.stderr)
        else:
            click.echo(f"{prompt}: ", nl=False, err=True)
            line = sys.stdin.readline()
            if not line:
                raise EOFError
            value = line.rstrip("\r\n")
    except EOFError:
        click.echo(err=True)  # end the prompt's line
        raise UsageError(
            f"login needs {what}, and the input ended before one was given",
            hint=f"type it, or pass {flags}",
        ) from None
    except KeyboardInterrupt:
        click.echo(err=True)  # end the prompt's line
        raise
    if not value:
        raise UsageError(f"login needs {what}, and none was given", hint=f"or pass {flags}")
    return value


@cli.command("logout")
@click.argument("registry")
@format_option()
def logout(registry: str, fmt: str) -> None:
    """Remove saved credentials for REGISTRY.

    \b
    Example:
      derrick logout localhost:5000
    """
    from derrick.auth.credentials import CredentialStore

    reg = _login_registry(registry)
    removed = CredentialStore().erase(reg)
    if fmt == "json":
        emit_json({"registry": str(reg), "removed": removed})
    elif removed:
        click.echo(f"Removed credentials for {reg}", err=True)
    else:
        click.echo(f"No saved credentials for {reg}", err=True)


for _group in GROUPS:
    cli.add_command(_group)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn errors into one-line messages and exit codes.

    A reader of standard output that stops early (``derrick tag ls … | head -1``)
    ends the run with status 141, as SIGPIPE would, and nothing on stderr.
    """
    # httpx imports its own command-line client (httpx._main) as it is imported, and with
    # it rich's syntax highlighting and pygments: ~40 ms that the derrick command never
    # uses.  The command owns its process, so it tells Python that module is not there
    # (httpx then falls back to a stub main()); importing derrick as a library does not.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    # Started with standard streams closed (>&-, <&-, 2>&-: Python makes them None).
    if sys.stdout is None:
        sys.stdout = _NoOutput()
    if sys.stdin is None:
        sys.stdin = io.StringIO()  # an input at its end
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - nowhere to say anything
    try:
        with _closed_output_is_final():
            # a command that ends with ctx.exit(N) (click's Exit) comes back as N
            code = cli.main(args=argv, prog_name="derrick", standalone_mode=False)
            sys.stdout.flush()  # a pipe closed after the last write fails here, not at exit
    except _OutputClosed:
        _silence_output()
        return 141
    except (_Interrupted, KeyboardInterrupt, click.exceptions.Abort):
        return _interrupted()
    except click.exceptions.NoArgsIsHelpError as e:
        e.show()  # a group without its command: its help
        return e.exit_code
    except click.UsageError as e:
        click.echo(f"derrick: error: {_usage_text(e)}", err=True)
        return e.exit_code
    except click.ClickException as e:
        click.echo(f"derrick: error: {e.format_message()}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except UsageError as e:
        click.echo(f"derrick: error: {error_text(e)}", err=True)
        return 2
    except DerrickError as e:
        click.echo(f"derrick: error: {error_text(e)}", err=True)
        return 1
    except OSError as e:
        click.echo(f"derrick: error: {_os_error_text(e)}", err=True)
        return 1
    return code if isinstance(code, int) else 0


def _usage_text(e: click.UsageError) -> str:
    """Click's complaint about the command line, as the middle of a sentence, and where the
    command's usage is shown: ``missing argument 'REFERENCE'; see 'derrick image pull --help'``."""
    text = e.format_message().strip().rstrip(".")
    text = text[:1].lower() + text[1:]
    command = e.ctx.command_path if e.ctx is not None else "derrick"
    return f"{text}; see '{command} --help'"


def _os_error_text(e: OSError) -> str:
    """``reason: path``; or, when a file stands where a directory must be (the path may be a
    temporary name the user never wrote), which file that is."""
    from derrick.oserrors import blocking_file

    if e.filename and e.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = blocking_file(os.fsdecode(e.filename))
        if blocker is not None:
            return f"cannot write in {blocker}: it is not a directory"
    return f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")


def _interrupted() -> int:
    """Say the command was interrupted, on a line of its own, and give its exit status.

    On a terminal the line starts with a carriage return, over the ``^C`` the terminal
    echoed (the progress display has ended its own line by then); elsewhere it is just
    the line, with no blank line before it.
    """
    lead = "\r" if _is_terminal(sys.stderr) else ""
    click.echo(f"{lead}derrick: interrupted", err=True)
    return 130


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())
