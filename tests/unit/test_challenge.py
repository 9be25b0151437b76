"""WWW-Authenticate parsing and scope merging."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from derrick.auth.challenge import (
    Challenge,
    format_challenge,
    merge_scope,
    parse_challenges,
    scopes_from_challenge,
)

HUB = (
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
    'scope="repository:library/alpine:pull"'
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            HUB,
            [
                (
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/alpine:pull",
                    },
                )
            ],
        ),
        ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
        ("Basic", [("basic", {})]),
        (
            'Basic realm="x", Bearer realm="y",service="z"',
            [("basic", {"realm": "x"}), ("bearer", {"realm": "y", "service": "z"})],
        ),
        (
            'Bearer realm="https://t/token",scope="repository:a/b:pull,push repository:c:pull"',
            [
                (
                    "bearer",
                    {
                        "realm": "https://t/token",
                        "scope": "repository:a/b:pull,push repository:c:pull",
                    },
                )
            ],
        ),
        # unquoted values, odd whitespace and case
        (
            "  BEARER   Realm = https://t/token ,  SERVICE=reg ,",
            [("bearer", {"realm": "https://t/token", "service": "reg"})],
        ),
        # escapes inside quoted strings
        (
            r'Bearer realm="a\"b\\c\d"',
            [("bearer", {"realm": 'a"b\\cd'})],
        ),
        (
            'Bearer realm="https://t/token",error="insufficient_scope",scope="repository:x:push"',
            [
                (
                    "bearer",
                    {
                        "realm": "https://t/token",
                        "error": "insufficient_scope",
                        "scope": "repository:x:push",
                    },
                )
            ],
        ),
        # leading and doubled commas (RFC 7230 list rule)
        (
            ', , Basic realm="x",, ,Bearer realm="y"',
            [("basic", {"realm": "x"}), ("bearer", {"realm": "y"})],
        ),
        # a scheme with no parameters followed by another challenge
        ('Negotiate, Basic realm="x"', [("negotiate", {}), ("basic", {"realm": "x"})]),
        # parameters separated by whitespace only, challenges without a comma
        (
            'Bearer realm="x" service="y" Basic realm="z"',
            [("bearer", {"realm": "x", "service": "y"}), ("basic", {"realm": "z"})],
        ),
        # the first of a repeated parameter wins
        ('Basic realm="a", realm="b"', [("basic", {"realm": "a"})]),
        # a broken parameter is skipped, the rest kept
        (
            'Bearer realm="x", @@@, service="y"',
            [("bearer", {"realm": "x", "service": "y"})],
        ),
        ('Bearer realm="x", scope=, service="y"', [("bearer", {"realm": "x", "service": "y"})]),
        # an unterminated quoted string drops that parameter
        ('Bearer service="y", realm="https://t/tok', [("bearer", {"service": "y"})]),
    ],
)
def test_parse(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    got = parse_challenges(header)
    assert [(c.scheme, dict(c.params)) for c in got] == expected


def test_token68() -> None:
    got = parse_challenges("Negotiate YWxhZGRpbjpvcGVuc2VzYW1l==, Basic realm=x")
    assert got == [
        Challenge("negotiate", {}, token68="YWxhZGRpbjpvcGVuc2VzYW1l=="),
        Challenge("basic", {"realm": "x"}),
    ]
    assert parse_challenges("Custom a/b+c~d")[0].token68 == "a/b+c~d"


@pytest.mark.parametrize(
    "garbage",
    ["", "   ", ",,,", '="x"', "=", '"quoted"', "@@@", "\x00\x01\x02", '@ realm="x"', "(((", "é"],
)
def test_garbage_gives_nothing(garbage: str) -> None:
    assert parse_challenges(garbage) == []


def test_several_header_lines() -> None:
    got = parse_challenges(['Basic realm="a"', "", "@@", HUB])
    assert [c.scheme for c in got] == ["basic", "bearer"]
    assert got[1].service == "registry.docker.io"


def test_properties_and_immutability() -> None:
    (ch,) = parse_challenges(HUB + ',error="insufficient_scope"')
    assert ch.realm == "https://auth.docker.io/token"
    assert ch.service == "registry.docker.io"
    assert ch.scope == "repository:library/alpine:pull"
    assert ch.error == "insufficient_scope"
    (basic,) = parse_challenges("Basic")
    assert basic.realm is None and basic.scope is None and basic.error is None
    with pytest.raises(TypeError):
        ch.params["realm"] = "elsewhere"  # type: ignore[index]
    assert hash(ch) == hash(parse_challenges(HUB + ',error="insufficient_scope"')[0])
    assert Challenge("BEARER", {"Realm": "x"}) == Challenge("bearer", {"realm": "x"})


def test_scopes_from_challenge() -> None:
    (ch,) = parse_challenges('Bearer realm="r",scope="repository:a:pull  repository:b:push"')
    assert scopes_from_challenge(ch) == ["repository:a:pull", "repository:b:push"]
    assert scopes_from_challenge(Challenge("bearer", {"realm": "r"})) == []


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [
        ([], []),
        (["repository:a/b:pull"], ["repository:a/b:pull"]),
        (
            ["repository:a/b:push", "repository:a/b:pull"],
            ["repository:a/b:pull,push"],
        ),
        (
            ["repository:a:zzz,delete", "repository:a:pull,aaa", "repository:a:push,pull"],
            ["repository:a:pull,push,delete,aaa,zzz"],
        ),
        (["repository:a:pull", "repository:a:*", "repository:a:push"], ["repository:a:*"]),
        (
            ["repository:b:pull", "repository:a:pull", "registry:catalog:*", "openid"],
            ["registry:catalog:*", "repository:a:pull", "repository:b:pull", "openid"],
        ),
        (["openid", "openid"], ["openid"]),
        (["repository:a:pull repository:a:push"], ["repository:a:pull,push"]),
        (
            ["repository(plugin):p:pull", "repository(plugin):p:push"],
            ["repository(plugin):p:pull,push"],
        ),
        (["repository:a:pull,,pull"], ["repository:a:pull"]),
    ],
)
def test_merge_scope(scopes: list[str], expected: list[str]) -> None:
    assert merge_scope(scopes) == expected


def test_merge_scope_order_independent() -> None:
    scopes = [
        "repository:b:push",
        "x",
        "repository:a:pull",
        "repository:b:pull",
        "registry:catalog:*",
    ]
    assert merge_scope(scopes) == merge_scope(reversed(scopes))
    assert merge_scope(merge_scope(scopes)) == merge_scope(scopes)


# -- round trip -------------------------------------------------------------------------

_TCHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
tokens = st.text(alphabet=_TCHARS, min_size=1, max_size=12)
params = st.dictionaries(
    tokens.map(str.lower),
    st.text(max_size=40),
    max_size=6,
)


@given(scheme=tokens, params=params)
def test_format_then_parse_round_trips(scheme: str, params: dict[str, str]) -> None:
    got = parse_challenges(format_challenge(scheme, params))
    assert len(got) == 1
    assert got[0].scheme == scheme.lower()
    assert dict(got[0].params) == params


@given(
    challenges=st.lists(
        st.tuples(tokens, st.dictionaries(tokens, tokens, min_size=1, max_size=4)),
        min_size=1,
        max_size=4,
    ),
    pad=st.sampled_from(["", " ", "  ", "\t"]),
)
def test_unquoted_values_and_several_challenges(
    challenges: list[tuple[str, dict[str, str]]], pad: str
) -> None:
    def seen(params: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in params.items():
            out.setdefault(k.lower(), v)
        return out

    header = f"{pad},{pad}".join(
        f"{scheme} " + ",".join(f"{k}{pad}={pad}{v}" for k, v in ps.items())
        for scheme, ps in challenges
    )
    got = parse_challenges(header)
    assert [(c.scheme, dict(c.params)) for c in got] == [
        (scheme.lower(), seen(ps)) for scheme, ps in challenges
    ]


@given(st.lists(st.text(alphabet=_TCHARS + ' \t,="\\/:@;()é\x00', max_size=60), max_size=3))
def test_never_raises(values: list[str]) -> None:
    for ch in parse_challenges(values):
        assert ch.scheme == ch.scheme.lower()
        assert all(k == k.lower() for k in ch.params)
