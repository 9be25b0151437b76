"""Parse ``WWW-Authenticate`` headers (RFC 7235) and handle token scopes.

A registry answers an unauthenticated request with ``401`` and one or more
challenges, for example::

    WWW-Authenticate: Bearer realm="https://auth.docker.io/token",
        service="registry.docker.io",scope="repository:library/alpine:pull"

:func:`parse_challenges` turns header values into :class:`Challenge` objects.
It never raises: parts of a header that cannot be parsed are skipped, so a
registry that sends a sloppy header still gets its well-formed challenges read.

Scopes (``repository:NAME:ACTIONS``) are what a token is asked for;
:func:`merge_scope` folds several of them into the smallest equivalent list,
in a canonical order that can serve as a cache key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "Challenge",
    "format_challenge",
    "merge_scope",
    "parse_challenges",
    "scopes_from_challenge",
]

# RFC 7230 tchar: the characters of a token (scheme names, parameter names and
# unquoted parameter values).
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# RFC 7235 token68: base64-ish credentials/data carried in place of parameters.
_T68CHAR = frozenset("-._~+/0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_WS = " \t"
_UNQUOTED_STOP = frozenset(' \t,"')

#: Actions listed first, in this order, when scopes are merged; others follow sorted.
_ACTION_ORDER = ("pull", "push", "delete")


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header.

    ``scheme`` is lowercased (``"basic"``, ``"bearer"`` or whatever the server
    sent); ``params`` has lowercased names and unquoted, unescaped values.  A
    challenge that carries a token68 blob instead of parameters keeps it in
    ``token68``.
    """

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)
    token68: str | None = None

    def __post_init__(self) -> None:
        # Keep the dataclass truly immutable (and its params mapping read-only).
        object.__setattr__(self, "scheme", self.scheme.lower())
        frozen = MappingProxyType({k.lower(): v for k, v in self.params.items()})
        object.__setattr__(self, "params", frozen)

    def __repr__(self) -> str:
        extra = f", token68={self.token68!r}" if self.token68 is not None else ""
        return f"Challenge(scheme={self.scheme!r}, params={dict(self.params)!r}{extra})"

    def __hash__(self) -> int:
        return hash((self.scheme, tuple(sorted(self.params.items())), self.token68))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Challenge):
            return NotImplemented
        return (self.scheme, dict(self.params), self.token68) == (
            other.scheme,
            dict(other.params),
            other.token68,
        )

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")

    @property
    def error(self) -> str | None:
        return self.params.get("error")


def parse_challenges(header_values: Sequence[str] | str) -> list[Challenge]:
    """All challenges in one or more ``WWW-Authenticate`` header values, in order.

    Accepts a single header value or a sequence of them (one per header line).
    Never raises; unparseable parts are skipped and garbage yields ``[]``.
    """
    values = [header_values] if isinstance(header_values, str) else header_values
    out: list[Challenge] = []
    for value in values:
        if not isinstance(value, str):
            continue
        out.extend(_Parser(value).parse())
    return out


def scopes_from_challenge(ch: Challenge) -> list[str]:
    """The scopes a challenge names (its ``scope`` parameter split on whitespace)."""
    return (ch.scope or "").split()


def merge_scope(scopes: Iterable[str]) -> list[str]:
    """Merge scopes that name the same resource into one entry each.

    ``repository:NAME:ACTIONS`` entries (and any other ``TYPE:NAME:ACTIONS``
    resource scope, such as ``registry:catalog:*``) for the same type and name
    become one entry with the union of their actions: ``pull``, ``push``,
    ``delete`` first, then other actions sorted; ``*`` stands for every action
    and absorbs the rest.  Other scopes are kept once each.  The result is
    sorted, so the same set of scopes always gives the same list.  An entry
    holding several space-separated scopes is split first.
    """
    resources: dict[tuple[str, str], set[str]] = {}
    others: set[str] = set()
    for entry in scopes:
        for scope in entry.split():
            parsed = _split_resource_scope(scope)
            if parsed is None:
                others.add(scope)
                continue
            rtype, name, actions = parsed
            resources.setdefault((rtype, name), set()).update(actions)
    keyed: list[tuple[tuple[int, str, str], str]] = []
    for (rtype, name), merged in resources.items():
        text = f"{rtype}:{name}:{','.join(_order_actions(merged))}"
        keyed.append(((0, rtype, name), text))
    keyed.extend(((1, s, ""), s) for s in others)
    keyed.sort()
    return [text for _, text in keyed]


def format_challenge(scheme: str, params: Mapping[str, str]) -> str:
    """A challenge as a server would write it: ``Scheme name="value",...``.

    Values are always quoted, with ``"`` and ``\\`` escaped.  The inverse of
    :func:`parse_challenges` for one challenge; handy for tests and fakes.
    """
    parts = [f'{name}="{_quote(value)}"' for name, value in params.items()]
    return f"{scheme} {','.join(parts)}" if parts else scheme


# -- internals ------------------------------------------------------------------------


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _split_resource_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """``TYPE:NAME:ACTIONS`` as its parts, or None if the scope is not of that form."""
    rtype, sep, rest = scope.partition(":")
    if not sep or not rtype:
        return None
    name, sep, actions = rest.rpartition(":")
    if not sep or not name:
        return None
    return rtype, name, [a for a in actions.split(",") if a]


def _order_actions(actions: set[str]) -> list[str]:
    if "*" in actions:
        return ["*"]
    first = [a for a in _ACTION_ORDER if a in actions]
    rest = sorted(actions.difference(_ACTION_ORDER))
    return first + rest


class _Parser:
    """A forgiving recursive-descent parser over one header value.

    Grammar (RFC 7235, section 4.1, with the list rules of RFC 7230 section 7)::

        challenges = *( "," OWS ) challenge *( OWS "," [ OWS challenge ] )
        challenge  = scheme [ 1*SP ( token68 / #auth-param ) ]
        auth-param = token BWS "=" BWS ( token / quoted-string )

    Beyond the grammar it accepts unquoted values that are not tokens (such as
    URLs), parameters separated by whitespace only, and a new challenge that
    follows parameters without a comma.  Anything it
    cannot read is skipped up to the next comma outside a quoted string.
    """

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.n = len(text)
        self.out: list[Challenge] = []
        self.scheme: str | None = None
        self.params: dict[str, str] = {}
        self.token68: str | None = None

    # -- helpers

    def _peek(self) -> str:
        return self.s[self.i] if self.i < self.n else ""

    def _skip_ws(self) -> None:
        while self.i < self.n and self.s[self.i] in _WS:
            self.i += 1

    def _token(self) -> str:
        start = self.i
        while self.i < self.n and self.s[self.i] in _TCHAR:
            self.i += 1
        return self.s[start : self.i]

    def _quoted(self) -> str | None:
        """A quoted-string starting at the opening quote; None if it never closes."""
        assert self.s[self.i] == '"'
        self.i += 1
        buf: list[str] = []
        while self.i < self.n:
            c = self.s[self.i]
            if c == "\\" and self.i + 1 < self.n:
                buf.append(self.s[self.i + 1])
                self.i += 2
            elif c == '"':
                self.i += 1
                return "".join(buf)
            else:
                buf.append(c)
                self.i += 1
        return None

    def _skip_to_comma(self) -> None:
        """Move past the next comma that is not inside a quoted string."""
        in_quote = False
        while self.i < self.n:
            c = self.s[self.i]
            self.i += 1
            if in_quote:
                if c == "\\":
                    self.i += 1
                elif c == '"':
                    in_quote = False
            elif c == '"':
                in_quote = True
            elif c == ",":
                return

    def _finish(self) -> None:
        if self.scheme is not None:
            self.out.append(Challenge(self.scheme, self.params, self.token68))
        self.scheme, self.params, self.token68 = None, {}, None

    def _try_token68(self) -> bool:
        """Read a token68 right after the scheme, if that is what follows."""
        start = self.i
        j = start
        while j < self.n and self.s[j] in _T68CHAR:
            j += 1
        if j == start:
            return False
        while j < self.n and self.s[j] == "=":
            j += 1
        k = j
        while k < self.n and self.s[k] in _WS:
            k += 1
        if k < self.n and self.s[k] != ",":
            return False  # something follows: this is a parameter list instead
        self.token68 = self.s[start:j]
        self.i = j
        return True

    # -- grammar

    def parse(self) -> list[Challenge]:
        while True:
            self._skip_ws()
            if self.i >= self.n:
                break
            c = self.s[self.i]
            if c == ",":
                self.i += 1
                continue
            start = self.i
            name = self._token()
            if not name:
                # Not a token: drop whatever this list element is.
                self._skip_to_comma()
                continue
            self._skip_ws()
            if self._peek() == "=" and self.scheme is not None and self.token68 is None:
                if not self._param(name):
                    # Malformed parameter: skip the rest of this list element.
                    self._skip_to_comma()
                continue
            if self._peek() == "=":
                # ``name=...`` with no challenge to belong to, or after a token68.
                self._skip_to_comma()
                continue
            # A new challenge.
            self._finish()
            self.scheme = name
            if self.i > start + len(name):  # whitespace followed the scheme
                self._try_token68()
        self._finish()
        return self.out

    def _param(self, name: str) -> bool:
        """Read ``= value`` for ``name`` (the cursor is on ``=``); False if malformed."""
        self.i += 1
        self._skip_ws()
        c = self._peek()
        if c == '"':
            value = self._quoted()
            if value is None:
                self.i = self.n  # unterminated: nothing after it can be trusted
                return True
        else:
            # RFC 7235 wants a token here; servers also send bare URLs, so take
            # everything up to the next comma or whitespace.
            start = self.i
            while self.i < self.n and self.s[self.i] not in _UNQUOTED_STOP:
                self.i += 1
            value = self.s[start : self.i]
            if not value:
                return False
        self.params.setdefault(name.lower(), value)
        before = self.i
        self._skip_ws()
        nxt = self._peek()
        # After a value: a comma, the end, or (leniently) whitespace and another
        # parameter or challenge.
        return nxt in ("", ",") or (self.i > before and nxt in _TCHAR)
