"""Registry authentication: challenges, credentials and the token flow.

:mod:`derrick.auth.challenge` parses ``WWW-Authenticate`` headers and merges
scopes; :mod:`derrick.auth.credentials` finds credentials where Docker keeps
them; :mod:`derrick.auth.token` answers challenges (imported on its own, as it
needs the HTTP transport).
"""

from __future__ import annotations

from derrick.auth.challenge import (
    Challenge,
    format_challenge,
    merge_scope,
    parse_challenges,
    scopes_from_challenge,
)
from derrick.auth.credentials import (
    DOCKER_HUB_KEY,
    Credential,
    CredentialStore,
    config_key,
    config_path,
    normalize_registry,
)

__all__ = [
    "DOCKER_HUB_KEY",
    "Challenge",
    "Credential",
    "CredentialStore",
    "config_key",
    "config_path",
    "format_challenge",
    "merge_scope",
    "normalize_registry",
    "parse_challenges",
    "scopes_from_challenge",
]
