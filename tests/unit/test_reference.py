"""Tests for derrick.reference: parsing and normalising image references."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from derrick.digest import Digest
from derrick.errors import InvalidReferenceError
from derrick.reference import (
    DEFAULT_REGISTRY,
    DOCKER_HUB_API_HOST,
    Reference,
    parse_registry,
    parse_repository,
    validate_tag,
)

HEX = "86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa"
D = f"sha256:{HEX}"
DIGEST = Digest("sha256", HEX)
HEX64 = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"


# -- known normalisations ------------------------------------------------------------------

VALID = [
    # input, registry, repository, tag, digest
    ("alpine", "docker.io", "library/alpine", "latest", None),
    ("alpine:3.20", "docker.io", "library/alpine", "3.20", None),
    ("library/alpine", "docker.io", "library/alpine", "latest", None),
    ("docker.io/alpine", "docker.io", "library/alpine", "latest", None),
    ("docker.io/library/alpine:3.20", "docker.io", "library/alpine", "3.20", None),
    ("index.docker.io/library/alpine", "docker.io", "library/alpine", "latest", None),
    ("index.docker.io/alpine", "docker.io", "library/alpine", "latest", None),
    ("index.docker.io/user/app", "docker.io", "user/app", "latest", None),
    ("user/app", "docker.io", "user/app", "latest", None),
    ("library/foo/bar", "docker.io", "library/foo/bar", "latest", None),
    ("store/foo/bar", "docker.io", "store/foo/bar", "latest", None),
    ("localhost/foo", "localhost", "foo", "latest", None),
    ("localhost/library/debian", "localhost", "library/debian", "latest", None),
    ("localhost:5000/foo", "localhost:5000", "foo", "latest", None),
    ("127.0.0.1:5000/a/b/c:tag", "127.0.0.1:5000", "a/b/c", "tag", None),
    ("192.168.0.1:8/debian", "192.168.0.1:8", "debian", "latest", None),
    ("example.com/foo", "example.com", "foo", "latest", None),
    ("example.com:8000/private/moonbase", "example.com:8000", "private/moonbase", "latest", None),
    # an uppercase domain stays as written; an uppercase first component is a registry
    ("Example.com/foo", "Example.com", "foo", "latest", None),
    ("Foo/bar", "Foo", "bar", "latest", None),
    ("LOCALDOMAIN/fooo/bar", "LOCALDOMAIN", "fooo/bar", "latest", None),
    ("[::1]:5000/foo", "[::1]:5000", "foo", "latest", None),
    ("[::1]/foo", "[::1]", "foo", "latest", None),
    (
        "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
        "[fc00:1:2:3:4:5:6:7]:5000",
        "library/debian",
        "latest",
        None,
    ),
    (f"foo@{D}", "docker.io", "library/foo", None, DIGEST),
    (f"foo:tag@{D}", "docker.io", "library/foo", "tag", DIGEST),
    (f"busybox:latest@{D}", "docker.io", "library/busybox", "latest", DIGEST),
    (f"quay.io/x/y@{D}", "quay.io", "x/y", None, DIGEST),
    # path-component separators: ".", "_", "__" and runs of "-"
    ("a-b__c/e", "docker.io", "a-b__c/e", "latest", None),
    ("docker---rules/docker", "docker.io", "docker---rules/docker", "latest", None),
    ("dock__er/docker", "docker.io", "dock__er/docker", "latest", None),
    ("ubuntu-12.04-base", "docker.io", "library/ubuntu-12.04-base", "latest", None),
    ("d/docker", "docker.io", "d/docker", "latest", None),
    # without a "/" nothing is a registry: dots are path, ":" starts a tag
    ("192.168.0.1", "docker.io", "library/192.168.0.1", "latest", None),
    ("192.168.0.1:80", "docker.io", "library/192.168.0.1", "80", None),
    ("localhost:5000", "docker.io", "library/localhost", "5000", None),
    ("example.com", "docker.io", "library/example.com", "latest", None),
    # 64 hex digits are only refused as the whole input
    (f"docker.io/{HEX64}", "docker.io", f"library/{HEX64}", "latest", None),
    (f"{HEX64}:tag", "docker.io", f"library/{HEX64}", "tag", None),
    (
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "docker.io",
        "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "latest",
        None,
    ),
    # tags: \w start, then \w . - ; uppercase allowed
    ("foo:_tag", "docker.io", "library/foo", "_tag", None),
    ("foo:V1.2-rc_3", "docker.io", "library/foo", "V1.2-rc_3", None),
    ("foo:" + "t" * 128, "docker.io", "library/foo", "t" * 128, None),
    # the 255-character limit is on the repository path, not the registry
    ("example.com/" + "a" * 255 + ":tag", "example.com", "a" * 255, "tag", None),
]


@pytest.mark.parametrize(("value", "registry", "repository", "tag", "digest"), VALID)
def test_parse_known(
    value: str, registry: str, repository: str, tag: str | None, digest: Digest | None
) -> None:
    ref = Reference.parse(value)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert Reference.parse(str(ref)) == ref
    assert Reference.parse(ref.familiar()) == ref


@pytest.mark.parametrize(
    ("value", "full", "familiar"),
    [
        ("alpine", "docker.io/library/alpine:latest", "alpine:latest"),
        ("docker.io/library/alpine:3.20", "docker.io/library/alpine:3.20", "alpine:3.20"),
        ("user/app:1", "docker.io/user/app:1", "user/app:1"),
        ("library/foo/bar", "docker.io/library/foo/bar:latest", "library/foo/bar:latest"),
        ("quay.io/x/y", "quay.io/x/y:latest", "quay.io/x/y:latest"),
        (f"foo@{D}", f"docker.io/library/foo@{D}", f"foo@{D}"),
        (f"reg.io/x:t@{D}", f"reg.io/x:t@{D}", f"reg.io/x:t@{D}"),
        ("[::1]:5000/foo:t", "[::1]:5000/foo:t", "[::1]:5000/foo:t"),
        # Hub paths that would read back as another registry keep "docker.io/"
        ("docker.io/localhost/x", "docker.io/localhost/x:latest", "docker.io/localhost/x:latest"),
        ("docker.io/a.b/c", "docker.io/a.b/c:latest", "docker.io/a.b/c:latest"),
    ],
)
def test_str_and_familiar(value: str, full: str, familiar: str) -> None:
    ref = Reference.parse(value)
    assert str(ref) == full
    assert ref.familiar() == familiar


def test_properties() -> None:
    hub = Reference.parse("alpine")
    assert hub.name == "docker.io/library/alpine"
    assert hub.familiar_name == "alpine"
    assert hub.api_host == DOCKER_HUB_API_HOST == "registry-1.docker.io"
    assert hub.identifier == "latest"

    local = Reference.parse(f"localhost:5000/team/app:v1@{D}")
    assert local.name == "localhost:5000/team/app"
    assert local.familiar_name == "localhost:5000/team/app"
    assert local.api_host == "localhost:5000"
    assert local.identifier == D  # the digest wins over the tag

    assert Reference.parse("user/app").familiar_name == "user/app"


def test_default_tag() -> None:
    assert Reference.parse("alpine", default_tag=None).tag is None
    assert Reference.parse("alpine", default_tag="edge").tag == "edge"
    assert Reference.parse("alpine:3", default_tag="edge").tag == "3"
    assert Reference.parse(f"alpine@{D}").tag is None
    with pytest.raises(InvalidReferenceError, match="invalid tag"):
        Reference.parse("alpine", default_tag="bad tag")


def test_identifier_needs_tag_or_digest() -> None:
    ref = Reference.parse("alpine", default_tag=None)
    with pytest.raises(InvalidReferenceError, match="neither tag nor digest"):
        _ = ref.identifier


def test_with_tag_and_digest() -> None:
    ref = Reference.parse(f"alpine:3@{D}")
    tagged = ref.with_tag("edge")
    assert (tagged.tag, tagged.digest) == ("edge", None)
    assert tagged.name == ref.name

    other = "sha512:" + "ab" * 64
    d1 = Reference.parse("alpine:3").with_digest(D)
    assert (d1.tag, d1.digest) == ("3", DIGEST)
    d2 = d1.with_digest(Digest.parse(other))
    assert str(d2) == f"docker.io/library/alpine:3@{other}"

    with pytest.raises(InvalidReferenceError, match='invalid tag "-x"'):
        ref.with_tag("-x")
    with pytest.raises(InvalidReferenceError, match="invalid sha256 digest"):
        ref.with_digest("sha256:abc")


def test_constructor_validates_and_normalises() -> None:
    assert Reference(registry="docker.io", repository="alpine") == Reference.parse(
        "alpine", default_tag=None
    )
    assert Reference(registry="index.docker.io", repository="u/a", tag="t") == Reference.parse(
        "u/a:t"
    )
    assert Reference(registry="quay.io", repository="x").repository == "x"
    for kwargs, fragment in [
        ({"registry": "quay.io", "repository": "Foo"}, "must be lowercase"),
        ({"registry": "quay.io", "repository": "a//b"}, '"//"'),
        ({"registry": "a_b", "repository": "x"}, 'invalid registry host "a_b"'),
        ({"registry": "myhost", "repository": "x"}, "read as a Docker Hub namespace"),
        ({"registry": "", "repository": "x"}, "registry is empty"),
        ({"registry": "quay.io", "repository": "x", "tag": ""}, 'invalid tag ""'),
        ({"registry": "quay.io", "repository": "x", "digest": D}, "digest must be a Digest"),
    ]:
        with pytest.raises(InvalidReferenceError, match=re.escape(fragment)):
            Reference(**kwargs)  # type: ignore[arg-type]


def test_frozen_and_hashable() -> None:
    ref = Reference.parse("alpine")
    with pytest.raises(AttributeError):
        ref.tag = "x"  # type: ignore[misc]
    assert {ref, Reference.parse("docker.io/library/alpine:latest")} == {ref}


# -- invalid inputs ------------------------------------------------------------------------

INVALID = [
    ("", "reference is empty"),
    ("foo/Bar", "repository name must be lowercase"),
    ("Foo", "repository name must be lowercase"),
    ("docker.io/docker/Docker", "repository name must be lowercase"),
    ("example.com/Foo:tag", "repository name must be lowercase"),
    (HEX64, "cannot specify 64-byte hexadecimal strings"),
    ("foo/", 'must not end with "/"'),
    ("docker/", 'must not end with "/"'),
    ("/foo", 'must not start with "/"'),
    ("foo//bar", 'must not contain "//"'),
    ("docker///docker", 'must not contain "//"'),
    ("docker.io/docker///docker", 'must not contain "//"'),
    (":tag", "repository name is empty"),
    (f"@{D}", "repository name is empty"),
    ("alpine:bad tag!", 'invalid tag "bad tag!"'),
    ("foo:", 'invalid tag ""'),
    ("foo:-tag", 'invalid tag "-tag"'),
    ("foo:.tag", 'invalid tag ".tag"'),
    ("foo:a:b", 'invalid tag "a:b"'),
    ("foo:" + "t" * 129, "longer than 128 characters"),
    ("foo:tag\n", "invalid tag"),
    ("foo@sha256:abc", "invalid sha256 digest"),
    ("foo@", "invalid digest"),
    ("foo@sha256:" + HEX.upper(), "invalid sha256 digest"),
    ("foo@md5:d41d8cd98f00b204e9800998ecf8427e", "unsupported digest algorithm"),
    (f"foo@{D}@{D}", "invalid digest"),
    ("example.com/" + "a" * 256, "repository name is too long: 256 characters, at most 255"),
    ("a" * 248, "repository name is too long"),  # "library/" makes it 256
    ("-foo", 'invalid repository path component "-foo"'),
    ("foo..bar", 'invalid repository path component "foo..bar"'),
    ("-docker/docker", 'invalid repository path component "-docker"'),
    ("docker-/docker", 'invalid repository path component "docker-"'),
    ("____/____", 'invalid repository path component "____"'),
    ("_docker/_docker", 'invalid repository path component "_docker"'),
    # a first component with "." is read as a registry, and these are no host names
    ("dock_.er/docker", 'invalid registry host "dock_.er"'),
    ("dock-.er/docker", 'invalid registry host "dock-.er"'),
    ("x/dock_.er", 'invalid repository path component "dock_.er"'),
    ("x/dock-.er", 'invalid repository path component "dock-.er"'),
    ("foo bar", 'invalid repository path component "foo bar"'),
    ("alpine\n", "invalid repository path component"),
    ("https://github.com/docker/docker", "a reference has no scheme (https://)"),
    ("host:abc/foo", 'invalid port "abc"'),
    ("host:/foo", 'invalid port ""'),
    ("localhost:99999/foo", 'invalid port 99999 in registry "localhost:99999": a port is 1 to'),
    ("host:0/foo", "invalid port 0"),
    ("[::1]:65536/foo", "invalid port 65536"),
    ("-docker.io/docker/docker", 'invalid registry host "-docker.io"'),
    # distribution would take this as a path with no domain; derrick needs a registry
    ("a-b__c.d/e", 'invalid registry host "a-b__c.d"'),
    ("[fc00::1]", "invalid repository path component"),
    ("[fc00::1]:5000", "invalid repository path component"),
    ("fc00::1:5000/debian", "too many colons"),
    ("[fe80::1%eth0]:5000/debian", "invalid IPv6 address"),
    ("[2001:db8:3:4::192.0.2.33]:5000/debian", "invalid IPv6 address"),
    ("[::1]x/foo", 'invalid registry "[::1]x"'),
]


@pytest.mark.parametrize(("value", "fragment"), INVALID)
def test_parse_invalid(value: str, fragment: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        Reference.parse(value)
    err = info.value
    assert fragment in err.message
    shown = json.dumps(value, ensure_ascii=False)
    if len(value) <= 300:
        assert err.message.startswith(f"invalid reference {shown}: ")
    assert err.hint
    assert isinstance(err, ValueError)


def test_hint_is_general_reference_form() -> None:
    with pytest.raises(InvalidReferenceError) as info:
        Reference.parse("")
    assert info.value.hint is not None
    assert "[registry/]repository[:tag][@digest]" in info.value.hint


def test_very_long_input_is_cut_in_message() -> None:
    with pytest.raises(InvalidReferenceError) as info:
        Reference.parse("x/" + "a" * 5000)
    assert len(info.value.message) < 500


def test_not_a_string() -> None:
    with pytest.raises(InvalidReferenceError, match="must be a string"):
        Reference.parse(42)  # type: ignore[arg-type]


# -- repositories, registries, tags --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alpine", ("docker.io", "library/alpine")),
        ("index.docker.io/user/app", ("docker.io", "user/app")),
        ("localhost:5000/team/app", ("localhost:5000", "team/app")),
        ("[::1]:5000/x", ("[::1]:5000", "x")),
        ("Quay.io/x/y", ("Quay.io", "x/y")),
    ],
)
def test_parse_repository(value: str, expected: tuple[str, str]) -> None:
    assert parse_repository(value) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("alpine:3.20", "a repository takes no tag (:3.20)"),
        (f"alpine@{D}", "a repository takes no digest"),
        ("localhost:5000", "a repository takes no tag (:5000)"),
        ("", "repository is empty"),
        ("foo/Bar", "must be lowercase"),
        (HEX64, "64-byte hexadecimal"),
    ],
)
def test_parse_repository_invalid(value: str, fragment: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_repository(value)
    assert fragment in info.value.message
    assert info.value.message.startswith(f"invalid repository {json.dumps(value)}")


def test_parse_repository_registry_hint() -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_repository("localhost:5000")
    assert info.value.hint is not None
    assert "localhost:5000/REPOSITORY" in info.value.hint


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("docker.io", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "registry-1.docker.io"),
        ("localhost", "localhost"),
        ("localhost:5000", "localhost:5000"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("[::1]:5000", "[::1]:5000"),
        ("Registry.Example.com", "Registry.Example.com"),
        ("myhost:443", "myhost:443"),
    ],
)
def test_parse_registry(value: str, expected: str) -> None:
    assert parse_registry(value) == expected


@pytest.mark.parametrize(
    ("value", "fragment", "hint"),
    [
        ("https://ghcr.io", "a registry has no scheme (https://)", 'leave out "https://"'),
        ("http://localhost:5000", "no scheme", 'leave out "http://"'),
        ("ghcr.io/owner", "no path", None),
        ("localhost:5000/", "no path", None),
        ("ghcr.io:tag", 'invalid port "tag"', None),
        ("", "registry is empty", None),
        ("my_host.io", "invalid registry host", None),
        ("myhost", "Docker Hub namespace", "myhost:443"),
        ("fc00::1", "too many colons", "brackets"),
    ],
)
def test_parse_registry_invalid(value: str, fragment: str, hint: str | None) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_registry(value)
    assert fragment in info.value.message
    assert info.value.message.startswith(f"invalid registry {json.dumps(value)}")
    if hint is not None:
        assert info.value.hint is not None
        assert hint in info.value.hint


@pytest.mark.parametrize("tag", ["latest", "3.20", "_x", "A", "v1-rc.2_x", "t" * 128])
def test_validate_tag(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize(
    ("tag", "fragment"),
    [
        ("", 'invalid tag "": tag is empty'),
        ("-x", 'invalid tag "-x"'),
        (".x", 'invalid tag ".x"'),
        ("a b", 'invalid tag "a b"'),
        ("a/b", 'invalid tag "a/b"'),
        ("é", 'invalid tag "é"'),
        ("t" * 129, "longer than 128"),
    ],
)
def test_validate_tag_invalid(tag: str, fragment: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        validate_tag(tag)
    assert fragment in info.value.message


# -- properties ----------------------------------------------------------------------------

_ALNUM = st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)
_SEP = st.sampled_from([".", "_", "__", "-", "--", "---"])


@st.composite
def path_components(draw: st.DrawFn) -> str:
    parts = [draw(_ALNUM)]
    for _ in range(draw(st.integers(0, 2))):
        parts += [draw(_SEP), draw(_ALNUM)]
    return "".join(parts)


_DOMAIN_LABEL = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,5}[a-zA-Z0-9])?", fullmatch=True)
_PORT = st.integers(1, 65535).map(str)


def _registry_like(r: str) -> bool:
    return r == "localhost" or "." in r or ":" in r or r.lower() != r


@st.composite
def registries(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["dns", "label", "ipv4", "ipv6", "fixed"]))
    if kind == "dns":
        host = ".".join(draw(st.lists(_DOMAIN_LABEL, min_size=2, max_size=4)))
    elif kind == "label":
        host = draw(_DOMAIN_LABEL)
    elif kind == "ipv4":
        host = ".".join(str(draw(st.integers(0, 255))) for _ in range(4))
    elif kind == "ipv6":
        host = "[" + draw(st.from_regex(r"[a-fA-F0-9:]{1,16}", fullmatch=True)) + "]"
    else:
        host = draw(st.sampled_from(["docker.io", "index.docker.io", "localhost", "quay.io"]))
    port = draw(st.none() | _PORT)
    registry = host if port is None else f"{host}:{port}"
    assume(_registry_like(registry))
    return registry


_TAGS = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_DIGESTS = st.builds(Digest.of, st.binary(max_size=8)) | st.builds(
    lambda b: Digest.of(b, "sha512"), st.binary(max_size=8)
)
_DOMAIN_RE = re.compile(
    r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
)


@st.composite
def references(draw: st.DrawFn) -> Reference:
    registry = draw(registries())
    path = "/".join(draw(st.lists(path_components(), min_size=1, max_size=4)))
    return Reference(
        registry=registry,
        repository=path,
        tag=draw(st.none() | _TAGS),
        digest=draw(st.none() | _DIGESTS),
    )


@given(
    registry=st.none() | registries(),
    components=st.lists(path_components(), min_size=1, max_size=4),
    tag=st.none() | _TAGS,
    digest=st.none() | _DIGESTS,
)
def test_grammar_strings_parse_as_modelled(
    registry: str | None, components: list[str], tag: str | None, digest: Digest | None
) -> None:
    """Strings built from the grammar parse to what the normalisation rules say."""
    text = "/".join(components) if registry is None else registry + "/" + "/".join(components)
    assume(not re.fullmatch(r"[a-f0-9]{64}", text))
    value = text + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")

    # the model: the first component is a registry only if it looks like one
    if registry is None and len(components) > 1 and _registry_like(components[0]):
        registry, components = components[0], components[1:]
    if registry is None:
        registry = DEFAULT_REGISTRY
    if registry == "index.docker.io":
        registry = DEFAULT_REGISTRY
    path = "/".join(components)
    if registry == DEFAULT_REGISTRY and len(components) == 1:
        path = "library/" + path

    if not _DOMAIN_RE.fullmatch(registry.partition(":")[0]) and not registry.startswith("["):
        # a leading path component such as "a_b.c" is read as a registry but is not a host
        with pytest.raises(InvalidReferenceError, match="invalid registry host"):
            Reference.parse(value)
        return
    ref = Reference.parse(value)
    assert ref.registry == registry
    assert ref.repository == path
    assert ref.tag == (tag if tag or digest else "latest")
    assert ref.digest == digest


@given(references())
def test_round_trip(ref: Reference) -> None:
    assert Reference.parse(str(ref), default_tag=None) == ref
    assert Reference.parse(ref.familiar(), default_tag=None) == ref
    assert parse_repository(ref.name) == (ref.registry, ref.repository)
    assert parse_repository(ref.familiar_name) == (ref.registry, ref.repository)
    assert parse_registry(ref.registry) == ref.registry


@given(references())
def test_familiar_and_full_agree(ref: Reference) -> None:
    assert ref.name == f"{ref.registry}/{ref.repository}"
    assert str(ref).startswith(ref.name)
    assert ref.familiar().startswith(ref.familiar_name)
    assert str(ref)[len(ref.name) :] == ref.familiar()[len(ref.familiar_name) :]
    assert ref.name.endswith(ref.familiar_name)
    if ref.registry != DEFAULT_REGISTRY:
        assert ref.familiar_name == ref.name
        assert ref.api_host == ref.registry
    else:
        assert ref.api_host == DOCKER_HUB_API_HOST
        assert (
            not ref.familiar_name.startswith("library/")
            or ref.familiar_name.count("/") > 1
            or (re.fullmatch(r"library/[a-f0-9]{64}", ref.familiar_name))
        )
    if ref.digest is not None:
        assert ref.identifier == str(ref.digest)
    elif ref.tag is not None:
        assert ref.identifier == ref.tag


_REF_ALPHABET = st.sampled_from([*"abcAB019-_.:/@[]", "sha256:" + HEX, "localhost", "io"])


@given(st.lists(_REF_ALPHABET, max_size=12).map("".join))
def test_parse_is_stable(value: str) -> None:
    """Whatever parses, its string forms parse back to the same reference."""
    try:
        ref = Reference.parse(value)
    except InvalidReferenceError:
        return
    assert Reference.parse(str(ref)) == ref
    assert str(Reference.parse(str(ref))) == str(ref)
    assert Reference.parse(ref.familiar()) == ref


@given(st.text(max_size=40))
def test_parse_only_raises_invalid_reference(value: str) -> None:
    for parse in (Reference.parse, parse_repository, parse_registry):
        try:
            parse(value)
        except InvalidReferenceError as e:
            assert e.message
            assert e.hint
