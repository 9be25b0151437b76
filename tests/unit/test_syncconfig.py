"""The sync configuration: schema, defaults and overrides, ${ENV}, errors with lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from derrick.errors import Remedy, UsageError
from derrick.images.model import Selection
from derrick.manifest import Platform
from derrick.ops.syncconfig import TagSelection, one_off, parse_config
from derrick.ops.syncplan import Shard

FULL = """
defaults:
  platforms: [linux/amd64, linux/arm64]
  digest-tags: true
  tags: {exclude: ['.*-rc.*']}
  destination:
    registry: ${MIRROR}
    prefix: hub
sources:
  - repository: docker.io/library/alpine
    tags: {semver: ">=3.18 <4", newest: 2}
  - repository: quay.io/team/app
    platforms: all
    digest-tags: false
    tags: [1.0, "2.0"]
    destination: {oci: /srv/layout}
  - namespace: registry.example/team
    destination: {strip-registry: false}
"""


def test_defaults_and_overrides() -> None:
    config = parse_config(FULL, "m.yaml", {"MIRROR": "mirror.example:5000"})
    alpine, app, team = config.sources
    assert alpine.selection.platforms and len(alpine.selection.platforms) == 2
    assert alpine.digest_tags and not app.digest_tags
    assert alpine.tags.semver is not None and alpine.tags.newest == 2
    assert alpine.tags.exclude and alpine.tags.exclude[0].pattern == ".*-rc.*"
    assert alpine.destination.registry == "mirror.example:5000"
    assert alpine.destination.repository_for("docker.io", "library/alpine") == "hub/library/alpine"
    assert app.selection.all and app.tags.explicit == ("1.0", "2.0")  # 1.0 stays text
    assert app.destination.registry is None and str(app.destination.layout) == "/srv/layout"
    assert team.namespace == "team" and team.repository is None
    assert (
        team.destination.repository_for("registry.example", "team/x")
        == "hub/registry.example/team/x"
    )
    assert alpine.where == "m.yaml:10"


def test_a_source_naming_its_own_destination_takes_none_of_the_defaults() -> None:
    # An OCI layout names each image by its full name: a prefix meant for the default
    # registry would make names such as hub/127.0.0.1:5000/team/app, which are no reference.
    config = parse_config(
        "defaults:\n"
        "  destination: {registry: mirror.example, prefix: hub, strip-registry: false}\n"
        "sources:\n"
        "  - repository: 127.0.0.1:5000/team/app\n"
        "    destination: {oci: /srv/layout}\n"
        "  - repository: 127.0.0.1:5000/team/tool\n"
        "    destination: {registry: other.example}\n"
        "  - repository: docker.io/library/alpine\n",
        "m.yaml",
        {},
    )
    app, tool, alpine = config.sources
    assert app.destination.repository_for("127.0.0.1:5000", "team/app") == (
        "127.0.0.1:5000/team/app"
    )
    assert tool.destination.repository_for("127.0.0.1:5000", "team/tool") == "team/tool"
    assert alpine.destination.repository_for("docker.io", "library/alpine") == (
        "hub/docker.io/library/alpine"
    )


def test_a_destination_repository_that_is_no_name_is_refused_up_front() -> None:
    # strip-registry: false puts the source registry in the path; with a port it is no name
    text = (
        "sources:\n"
        "  - repository: 127.0.0.1:5000/team/app\n"
        "    destination: {registry: mirror.example, strip-registry: false}\n"
    )
    with pytest.raises(UsageError) as e:
        parse_config(text, "m.yaml", {})
    assert str(e.value).startswith(
        "m.yaml:3: sources[0].destination: the destination repository "
        "mirror.example/127.0.0.1:5000/team/app is no repository name ("
    )
    assert str(e.value).endswith(
        "); a source registry with a port needs strip-registry: true, or a destination "
        "repository of its own"
    )


def test_tag_selection_order() -> None:
    config = parse_config(FULL, "m.yaml", {"MIRROR": "m.example"})
    tags = config.sources[0].tags
    got, filtered = tags.choose(["3.17", "3.18", "3.19", "3.20-rc1", "3.20", "4.0", "latest"])
    assert got == ["3.19", "3.20"]
    assert filtered == ["3.17", "3.18", "3.20-rc1", "4.0", "latest"]


def test_pins_alone_name_everything() -> None:
    from derrick.digest import Digest

    d = Digest.parse("sha256:" + "a" * 64)
    assert TagSelection(pins=(("stable", d),)).choose(["1", "stable"]) == ([], ["1"])
    assert not TagSelection(pins=(("stable", d),)).needs_listing


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ("", "m.yaml: sources: the file is empty"),
        ("- a\n", "m.yaml:1: not a sync configuration: the file is a list, where a configuration"),
        ("just words\n", "m.yaml:1: not a sync configuration: the file is plain text"),
        ("sources:\n  - {repository: a.b/c, namespace: a.b/d}\n", "m.yaml:2: sources[0]: give"),
        (
            "sources:\n  - repository: a.b/c\n    destination: {registry: x.y, oci: /d}\n",
            "m.yaml:3: sources[0].destination: give registry or oci",
        ),
        (
            "sources:\n  - repository: a.b/c\n    destination: {registry: x.y}\n"
            "    tags: {newest: 0}\n",
            "m.yaml:4: sources[0].tags.newest: must be a whole number",
        ),
        (
            "sources:\n  - repository: a.b/c\n    destination: {registry: x.y}\n"
            "    digest-tags: maybe\n",
            "m.yaml:4: sources[0].digest-tags: must be true or false",
        ),
        (
            "sources:\n  - repository: a.b/c\n    destination: {registry: x.y}\n"
            "    tags: {pins: {stable: nope}}\n",
            "m.yaml:4: sources[0].tags.pins.stable:",
        ),
        (
            "sources:\n  - namespace: a.b/c\n    destination: {registry: x.y, repository: z}\n",
            "m.yaml:3: sources[0].destination.repository: a namespace has many",
        ),
        (
            "sources:\n  - repository: a.b/Bad\n    destination: {registry: x.y}\n",
            "m.yaml:2: sources[0].repository:",
        ),
    ],
)
def test_errors_name_file_line_and_key(text: str, start: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_config(text, "m.yaml", {})
    assert str(e.value).startswith(start), str(e.value)
    assert "\n" not in str(e.value)


def test_one_off_forms(tmp_path: Path) -> None:
    reg = one_off("alpine", "localhost:5000/mirror/alpine", include=("3.*",)).sources[0]
    assert (reg.registry, reg.repository) == ("docker.io", "library/alpine")
    assert reg.destination.repository_for("docker.io", "library/alpine") == "mirror/alpine"
    assert reg.selection == Selection(all=True)  # a mirror keeps every platform
    lay = one_off("alpine", "oci:/tmp/x").sources[0]
    assert lay.destination.layout == Path("/tmp/x")
    assert lay.destination.repository_for("docker.io", "library/alpine") == (
        "docker.io/library/alpine"
    )
    plain = one_off("alpine", f"{tmp_path}/new-mirror").sources[0]
    assert plain.destination.layout == tmp_path / "new-mirror"
    narrow = Selection(platforms=(Platform.parse("linux/arm64"),))
    assert one_off("alpine", "oci:/tmp/x", selection=narrow).sources[0].selection == narrow


@pytest.mark.parametrize(
    ("destination", "says"),
    [
        ("localhost:5000/x:v1", "a sync destination is a repository, without a tag or digest"),
        ("oci:/tmp/x:v1", "a sync into an OCI layout names each image itself"),
        ("oci-archive:/tmp/x.tar", "not an archive"),
        ("docker-archive:/tmp/x.tar", "not an archive"),
    ],
)
def test_one_off_destinations_refused(destination: str, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        one_off("alpine", destination)


def test_messages_name_no_command_line_flag() -> None:
    """The library says what is wrong in its own words; the remedy is for the front end."""
    with pytest.raises(UsageError) as bad_pattern:
        one_off("alpine", "localhost:5000/x", include=("(",))
    assert str(bad_pattern.value).startswith(
        "the tag pattern to include '(' is not a valid regular expression"
    )
    text = "sources:\n  - repository: a.b/c\n    destination: {registry: x.y, token: t}\n"
    with pytest.raises(UsageError) as secret:
        parse_config(text, "m.yaml", {})
    assert secret.value.message == (
        "m.yaml:3: sources[0].destination.token: credentials are not read from this file"
    )
    assert secret.value.remedy == Remedy("saved-credentials")
    for e in (bad_pattern.value, secret.value):
        assert "--" not in str(e) and "derrick " not in str(e)


def test_shards() -> None:
    keys = [f"r:{i}" for i in range(200)]
    owned = [[k for k in keys if Shard(i, 4).owns(k)] for i in range(4)]
    assert sorted(k for o in owned for k in o) == sorted(keys)
    assert all(30 < len(o) < 70 for o in owned)
    assert Shard.parse("2/4") == Shard(2, 4)
    for bad in ("4/4", "-1/2", "x", "1/0"):
        with pytest.raises(UsageError):
            Shard.parse(bad)
