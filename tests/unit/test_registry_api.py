"""The registry client's public surface, which the rest of derrick and library users build
on, and the shape of the package behind it (small parts, none too long to read)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import derrick.registry
from derrick.registry import (
    BlobStream,
    FetchedManifest,
    ManifestHead,
    PingResult,
    RateLimit,
    RegistryClient,
)
from derrick.transport import Transport

#: method -> its parameters after self, as "name" (positional), "*name" (keyword-only),
#: with "=" when it has a default.
SURFACE = {
    "ping": ["registry"],
    "check_login": ["registry"],
    "list_tags": ["ref", "*page_size=", "*last="],
    "catalog": ["registry", "*page_size=", "*last="],
    "get_manifest": ["ref", "*accept="],
    "head_manifest": ["ref", "*accept="],
    "put_manifest": ["ref", "raw", "media_type", "*scopes="],
    "delete_manifest": ["ref"],
    "head_blob": ["ref", "digest", "*scopes="],
    "open_blob": ["ref", "digest", "*offset="],
    "get_blob_bytes": ["ref", "desc", "*max_size="],
    "delete_blob": ["ref", "digest"],
    "mount_blob": ["ref", "digest", "from_repository"],
    "upload_blob": ["ref", "digest", "size", "open_at", "*chunk_size=", "*progress=", "*scopes="],
    "close": [],
    "__init__": [
        "*credentials=",
        "*insecure=",
        "*insecure_registries=",
        "*ca_cert=",
        "*certs_dir=",
        "*timeout=",
        "*retries=",
        "*max_connections=",
        "*transport=",
    ],
}


def _params(fn: object) -> list[str]:
    out = []
    for p in list(inspect.signature(fn).parameters.values())[1:]:  # type: ignore[arg-type]
        star = "*" if p.kind is inspect.Parameter.KEYWORD_ONLY else ""
        out.append(f"{star}{p.name}{'=' if p.default is not p.empty else ''}")
    return out


def test_public_methods_keep_their_signatures() -> None:
    public = {n for n in vars(RegistryClient) if not n.startswith("_")}
    assert public == set(SURFACE) - {"__init__"}
    for name, params in SURFACE.items():
        assert _params(getattr(RegistryClient, name)) == params, name


def test_public_names_and_attributes() -> None:
    for cls in (BlobStream, FetchedManifest, ManifestHead, PingResult, RateLimit):
        assert getattr(derrick.registry, cls.__name__) is cls
    with RegistryClient() as client:
        assert isinstance(client.transport, Transport)
        assert client.auth.token_requests == []
    transport = Transport()
    assert RegistryClient(transport=transport).transport is transport


PACKAGE = Path(derrick.registry.__file__).parent


def test_the_registry_package_is_made_of_small_parts() -> None:
    """No module over 400 lines, no function over 60, no mixin stubs for type checkers."""
    for path in sorted(PACKAGE.glob("*.py")):
        text = path.read_text()
        assert text.count("\n") <= 400, path.name
        assert "TYPE_CHECKING" not in text, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                assert length <= 60, f"{path.name}: {node.name} is {length} lines"
