"""How the CLI words an error: the library's message, its hint, and its remedy said with
the CLI's own flags and commands (the one place they are).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
    "platform": "use --platform {platform}, or leave --platform out",
    "no-platform": "leave out --platform",
    "platforms": "choose one of those with --platform",
    "not-an-image": "pull it to an OCI layout (-o DIR) or an OCI archive (-o oci-archive:FILE), "
    "or copy it to a registry with derrick image copy",
    "saved-credentials": "log in with 'derrick login REGISTRY', or pass --username and "
    "--password-stdin",
    "all-platforms": "pull or copy it with --all-platforms",
    "oci-archive": "write an OCI archive instead (oci-archive:FILE, or --format oci-archive)",
    "cache-dir": "--cache-dir or DERRICK_CACHE_DIR chooses another cache",
}


def remedy_text(remedy: Remedy) -> str:
    """The remedy as the CLI says it (in library words for a kind it does not know)."""
    template = REMEDIES.get(remedy.kind)
    return fill(template, remedy.params) if template else remedy.describe()


def error_text(e: DerrickError) -> str:
    """``message; hint; remedy`` (what is there of them), for ``derrick: error: …``."""
    parts = [e.message, e.hint, remedy_text(e.remedy) if e.remedy else None]
    return "; ".join(p for p in parts if p)


def same_tag_warning(layout: str, name: str, tag: str, digest: str, names: Sequence[str]) -> str:
    """The warning after an image ``name`` (of ``digest``) was put into the OCI layout
    ``layout`` under ``tag``, which ``names`` (every image so tagged there) now share.

    Says how derrick names one of them (its full name, or its digest), and that skopeo
    reads only the tag, with which it takes whichever entry comes first in index.json.
    """
    return (
        f"derrick: warning: {layout} now holds {len(names)} images tagged {tag!r} "
        f"({', '.join(names)}), so {tag!r} alone names none of them: name one by its full "
        f"name or its digest, as in oci:{layout}:{name} or oci:{layout}:{digest}; skopeo "
        f"reads only the tag (oci:{layout}:{tag}) and takes whichever comes first in index.json"
    )
