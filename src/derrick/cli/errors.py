"""How the CLI words an error: the library's message, its hint, and its remedy said with
the CLI's own flags and commands (the one place they are).
"""

from __future__ import annotations

from collections.abc import Mapping

from derrick.errors import DerrickError, Remedy, fill

#: Every remedy kind (see :data:`derrick.errors.RemedyKind`) in the CLI's words.
REMEDIES: Mapping[str, str] = {
    "insecure": "pass --insecure if you trust {host} over http",
    "login": "log in with 'derrick login {registry}' or pass --username and --password-stdin",
    "credentials": "check the user name and password (derrick login {registry})",
    "inline-credentials": "pass --username and --password-stdin to each command instead",
    "ca-cert": "pass the registry's CA with --ca-cert FILE, or put it in {path}, or use --insecure",
    "ca-file": "pass a PEM file with --ca-cert",
    "timeout": "raise --timeout, or run the command again",
    "retries": "run the command again, or raise --retries",
    "retry": "run the command again",
    "tags": "list the tags with 'derrick tag ls'",
    "saved-credentials": "log in with 'derrick login REGISTRY', or pass --username and "
    "--password-stdin",
}


def remedy_text(remedy: Remedy) -> str:
    """The remedy as the CLI says it (in library words for a kind it does not know)."""
    template = REMEDIES.get(remedy.kind)
    return fill(template, remedy.params) if template else remedy.describe()


def error_text(e: DerrickError) -> str:
    """``message; hint; remedy`` (what is there of them), for ``derrick: error: …``."""
    parts = [e.message, e.hint, remedy_text(e.remedy) if e.remedy else None]
    return "; ".join(p for p in parts if p)
