"""What every command shares: connection options, the client, output helpers.

Light to import (every command, ``--help`` and ``--version`` load it): what a helper
needs (the registry client, credentials, rich, ...) is imported when it is called.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from derrick.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from derrick.auth.credentials import CredentialStore
    from derrick.manifest import Platform
    from derrick.reference import Reference
    from derrick.registry import RegistryClient

F = TypeVar("F", bound=Callable[..., Any])

FORMATS = ("text", "json")


@dataclass
class Options:
    insecure: bool = False
    ca_cert: Path | None = None
    username: str | None = None
    password_stdin: bool = False
    timeout: float = 30.0
    retries: int = 3
    debug: bool = False
    _password: str | None = None

    def password(self) -> str | None:
        if self.password_stdin and self._password is None:
            data = sys.stdin.readline()
            self._password = data.rstrip("\r\n")
            if not self._password:
                raise UsageError("--password-stdin was given but standard input was empty")
        return self._password

    def credential_store(self, registry: str | None = None) -> CredentialStore:
        from derrick.auth.credentials import Credential, CredentialStore

        overrides: dict[str, Credential] = {}
        if self.username is not None or self.password_stdin:
            if self.username is None:
                raise UsageError("--password-stdin needs --username")
            if not self.password_stdin:
                raise UsageError(
                    "--username needs --password-stdin",
                    hint="pass the password or token on standard input",
                )
            pw = self.password()
            if registry is None:
                raise UsageError("--username applies to one registry; name it in the reference")
            overrides[registry] = Credential(username=self.username, password=pw)
        return CredentialStore(overrides=overrides)

    def client(self, registry: str | None = None) -> RegistryClient:
        from derrick.registry import RegistryClient

        return RegistryClient(
            credentials=self.credential_store(registry),
            insecure=self.insecure,
            ca_cert=self.ca_cert,
            certs_dir=certs_dir(),
            timeout=self.timeout,
            retries=self.retries,
        )


def certs_dir() -> Path:
    """Per-registry TLS files, Docker's way: ``DIR/HOST[:PORT]/`` holding ``*.crt`` CAs and
    ``client.cert``/``client.key``.  ``$DERRICK_CERTS_DIR``, else ``/etc/docker/certs.d``."""
    return Path(os.environ.get("DERRICK_CERTS_DIR") or "/etc/docker/certs.d")


#: The longest ``--timeout`` taken: an hour per request.
MAX_TIMEOUT = 3600.0


def _timeout(ctx: click.Context, param: click.Parameter, value: str | float) -> float:
    """``--timeout``: seconds, more than 0 and at most :data:`MAX_TIMEOUT`."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT:  # also refuses nan
        raise UsageError(
            f"--timeout {value} is not a number of seconds more than 0 and at most {MAX_TIMEOUT:g}",
            hint="e.g. --timeout 30",
        )
    return seconds


def connection_options(f: F) -> F:
    """Options for reaching and authenticating to a registry, shared by every command."""

    @click.option(
        "--insecure",
        is_flag=True,
        envvar="DERRICK_INSECURE",
        help="Allow plain http and unverified TLS for the registry.",
    )
    @click.option(
        "--ca-cert",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="PEM file of a CA to trust for the registry's TLS certificate.",
    )
    @click.option("-u", "--username", help="User name (with --password-stdin).")
    @click.option(
        "--password-stdin", is_flag=True, help="Read the password or token from standard input."
    )
    @click.option(
        "--timeout",
        default="30",
        callback=_timeout,
        metavar="SECONDS",
        show_default=True,
        help=f"Seconds to wait for the registry on each request (at most {MAX_TIMEOUT:g}).",
    )
    @click.option(
        "--retries",
        type=click.IntRange(0, 20),
        default=3,
        show_default=True,
        help="How often to retry a failed request.",
    )
    @click.option("--debug", is_flag=True, help="Log HTTP requests (secrets redacted) to stderr.")
    @functools.wraps(f)
    def wrapper(
        *args: Any,
        insecure: bool,
        ca_cert: Path | None,
        username: str | None,
        password_stdin: bool,
        timeout: float,
        retries: int,
        debug: bool,
        **kwargs: Any,
    ) -> Any:
        if debug:
            logging.basicConfig(
                level=logging.DEBUG, stream=sys.stderr, format="debug: %(name)s: %(message)s"
            )
            logging.getLogger("httpcore").setLevel(logging.WARNING)
            logging.getLogger("httpx").setLevel(logging.WARNING)
        opts = Options(insecure, ca_cert, username, password_stdin, timeout, retries, debug)
        return f(*args, opts=opts, **kwargs)

    return wrapper  # type: ignore[return-value]


if TYPE_CHECKING:
    _Choice = click.Choice[str]
else:
    _Choice = click.Choice  # generic only from click 8.2 on


class Formats(_Choice):
    """Choices of which the first few are shown (the others are old spellings, or the
    destination kinds ``--format`` of the copying commands still takes)."""

    def __init__(self, shown: Sequence[str], hidden: Sequence[str]) -> None:
        super().__init__([*shown, *hidden])
        self.shown = list(shown)

    def get_metavar(self, *args: Any, **kwargs: Any) -> str:
        return "[" + "|".join(self.shown) + "]"


def format_option(*choices: str) -> Callable[[F], F]:
    allowed = choices or FORMATS
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(allowed),
        default=allowed[0],
        show_default=True,
        help="Output format.",
    )


def platform_option(f: F) -> F:
    from derrick.manifest import Platform

    return click.option(
        "--platform",
        help="Platform to pick from a multi-platform image, as os/arch[/variant] (default: "
        f"this machine's, {Platform.host()}); an image that is not in an index must be of "
        "the platform given.",
    )(f)


def parse_platform(value: str | None) -> Platform | None:
    from derrick.manifest import Platform

    return Platform.parse(value) if value else None


#: How an image on disk is written (see derrick.images.locations), refused where a
#: command reads a registry only.
_ON_DISK = ("oci:", "oci-archive:", "docker-archive:", "/", "./", "../", "~/")


def parse_ref(value: str) -> Reference:
    """A registry reference (``docker://`` allowed), for commands that read a registry only:
    an image on disk, written as the image commands take it, is named as such."""
    from derrick.reference import Reference, bare_registry

    if value.startswith("docker://"):
        return Reference.parse(value.removeprefix("docker://"))
    error = bare_registry(value)
    if error is not None:
        raise error
    refuse_on_disk(value)
    return Reference.parse(value)


def refuse_on_disk(value: str, *, copy: bool = False) -> None:
    """Refuse ``value`` where the command takes a registry reference, if it names a place
    on disk as the image commands write one (``oci:DIR``, ``./DIR``...); ``copy``: say
    that ``image copy`` copies between any two places."""
    if value.startswith(_ON_DISK) or value in (".", ".."):
        ctx = click.get_current_context(silent=True)
        command = ctx.command_path if ctx is not None else "derrick"
        hint = "give REGISTRY/REPOSITORY[:TAG] (docker://REF for a name that looks like a path)"
        if copy:
            hint += "; 'derrick image copy SRC DST' copies between any two places"
        raise UsageError(
            f"{value} is a place on disk, and '{command}' takes a registry reference",
            hint=hint,
        )


def stdout_console() -> Console:
    from rich.console import Console

    # A pipe gets whole lines: rich would otherwise cut digests to 80 columns.
    width = None if sys.stdout.isatty() else 4096
    return Console(file=sys.stdout, soft_wrap=True, highlight=False, width=width)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def emit(fmt: str, data: Any, text: Callable[[Any], None]) -> None:
    """A command's result on stdout: JSON with ``--format json``, else as ``text`` says it."""
    if fmt == "json":
        emit_json(data)
    else:
        text(data)


def emit_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None
) -> None:
    from rich.table import Table

    table = Table(
        *columns, title=title, box=None, pad_edge=False, show_edge=False, header_style="bold"
    )
    for r in rows:
        table.add_row(*(str(c) if c is not None else "" for c in r))
    stdout_console().print(table)


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
