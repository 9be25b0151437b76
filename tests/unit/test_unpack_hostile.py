"""Unpacking hostile layers: nothing may be written outside the destination.

Each test builds layer tars with :mod:`tarfile`, wraps them in an OCI layout and unpacks it
next to a sentinel directory.  The sentinel's content (and the rest of ``tmp_path``) must be
unchanged afterwards, and the unpack must either fail with :class:`LayoutError` (leaving no
destination) or produce the hostile paths safely inside the destination.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from derrick.errors import LayoutError
from derrick.images.view import open_image
from derrick.layout.tarread import TarReader, clean_path
from derrick.ops.unpack import unpack_image
from support.images import AMD64, OCI_LAYER_GZIP, Layer, LayoutWriter, gzip_bytes, sha256_digest

# -- building layers -------------------------------------------------------------------------


def reg(name: str, data: bytes | str = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    body = data.encode() if isinstance(data, str) else data
    info = tarfile.TarInfo(name)
    info.size = len(body)
    info.mode = mode
    return info, body


def dir_(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return info, b""


def sym(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    info.mode = 0o777
    return info, b""


def hard(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE
    info.linkname = target
    return info, b""


def dev(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    info.mode = 0o666
    return info, b""


def tar_of(*members: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in members:
            info.mtime = 1704067200
            tf.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def layout_of(path: Path, *tars: bytes) -> Path:
    w = LayoutWriter(path)
    layers = [Layer(w.blob(gzip_bytes(t), OCI_LAYER_GZIP), sha256_digest(t), len(t)) for t in tars]
    img = w.image(layers, AMD64)
    w.finish("hostile", "v1", img.manifest, img.manifest_bytes, [img])
    return path


# -- the guard -------------------------------------------------------------------------------


def tree_state(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under ``root`` (not following links): type+mode, link count, digest/target."""
    out: dict[str, tuple[int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISREG(st.st_mode):
                detail = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(p)
            else:
                detail = ""
            links = 0 if stat.S_ISDIR(st.st_mode) else st.st_nlink
            out[str(p.relative_to(root))] = (st.st_mode, links, detail)
    return out


class Arena:
    """A sentinel directory beside the destination; checks nothing outside DIR changed."""

    def __init__(self, tmp_path: Path) -> None:
        self.base = tmp_path
        self.sentinel = tmp_path / "sentinel"
        self.sentinel.mkdir()
        (self.sentinel / "secret").write_text("do not touch\n")
        (self.sentinel / "sub").mkdir()
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.dest = self.work / "rootfs"
        self.layouts = tmp_path / "layouts"
        self.layouts.mkdir()
        self._n = 0
        self._before = self._outside()

    def _outside(self) -> dict[str, tuple[int, int, str]]:
        state = tree_state(self.base)
        return {k: v for k, v in state.items() if not k.startswith(("work/rootfs", "layouts"))}

    def unpack(self, *tars: bytes, **kwargs: object) -> Path:
        self._n += 1
        layout = layout_of(self.layouts / f"l{self._n}", *tars)
        with open_image(str(layout)) as img:
            unpack_image(img, self.dest, **kwargs)  # type: ignore[arg-type]
        return self.dest

    def check_untouched(self) -> None:
        assert self._outside() == self._before
        assert (self.sentinel / "secret").read_text() == "do not touch\n"
        assert sorted(p.name for p in self.sentinel.iterdir()) == ["secret", "sub"]
        assert list((self.sentinel / "sub").iterdir()) == []
        leftovers = [p.name for p in self.work.iterdir() if p.name != "rootfs"]
        assert leftovers == []  # no temporary tree left behind


@pytest.fixture
def arena(tmp_path: Path) -> Arena:
    return Arena(tmp_path)


def fails(arena: Arena, *tars: bytes, match: str) -> None:
    with pytest.raises(LayoutError, match=match):
        arena.unpack(*tars)
    assert not arena.dest.exists()
    arena.check_untouched()


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "../../sentinel/secret", "a/../../x", "./../x"])
def test_dotdot_escape_is_refused(arena: Arena, name: str) -> None:
    fails(arena, tar_of(reg("ok", "fine"), reg(name, "pwned")), match="outside the root")


def test_dotdot_that_stays_inside_is_resolved(arena: Arena) -> None:
    dest = arena.unpack(tar_of(dir_("a"), reg("a/../b", "inside")))
    assert (dest / "b").read_text() == "inside"
    arena.check_untouched()


def test_absolute_paths_stay_inside(arena: Arena) -> None:
    secret = str(arena.sentinel / "secret")
    dest = arena.unpack(tar_of(reg("/etc/x", "abs"), reg(secret, "overwritten?")))
    assert (dest / "etc/x").read_text() == "abs"
    assert (dest / secret.lstrip("/")).read_text() == "overwritten?"
    arena.check_untouched()


# -- symlinks --------------------------------------------------------------------------------


def test_symlink_to_outside_then_file_through_it_same_layer(arena: Arena) -> None:
    target = str(arena.sentinel)
    dest = arena.unpack(tar_of(sym("a", target), dir_(target), reg("a/pwned", "gotcha")))
    # the link is kept as written, but writing through it is resolved inside DIR
    assert os.readlink(dest / "a") == target
    assert (dest / target.lstrip("/") / "pwned").read_text() == "gotcha"
    arena.check_untouched()


def test_symlink_to_outside_then_file_through_it_next_layer(arena: Arena) -> None:
    target = str(arena.sentinel)
    dest = arena.unpack(
        tar_of(sym("a", target)),
        tar_of(reg("a/pwned", "gotcha"), reg("a/secret", "replaced?")),
    )
    inside = dest / target.lstrip("/")
    assert (inside / "pwned").read_text() == "gotcha"
    assert (inside / "secret").read_text() == "replaced?"
    arena.check_untouched()


def test_symlink_to_tmp_outside(arena: Arena) -> None:
    dest = arena.unpack(tar_of(sym("a", "/tmp/outside")), tar_of(reg("a/pwned", "x")))
    assert (dest / "tmp/outside/pwned").read_text() == "x"
    assert not Path("/tmp/outside/pwned").exists()
    arena.check_untouched()


def test_dotdot_symlink_chain_stays_at_the_root(arena: Arena) -> None:
    dest = arena.unpack(
        tar_of(sym("up", ".."), dir_("deep"), sym("deep/link", "../../../../..")),
        tar_of(reg("up/up/up/escape", "one"), reg("deep/link/sentinel/secret", "two")),
    )
    assert (dest / "escape").read_text() == "one"
    assert (dest / "sentinel/secret").read_text() == "two"
    arena.check_untouched()


def test_symlink_loop_is_an_error(arena: Arena) -> None:
    fails(
        arena,
        tar_of(sym("l1", "l2"), sym("l2", "l1")),
        tar_of(reg("l1/x", "loop")),
        match="too many levels of symbolic links",
    )


def test_a_file_replaces_a_symlink_instead_of_writing_through_it(arena: Arena) -> None:
    secret = str(arena.sentinel / "secret")
    dest = arena.unpack(tar_of(sym("f", secret)), tar_of(reg("f", "new content")))
    assert not (dest / "f").is_symlink()
    assert (dest / "f").read_text() == "new content"
    arena.check_untouched()


def test_a_directory_replaces_a_symlink_to_outside(arena: Arena) -> None:
    dest = arena.unpack(
        tar_of(sym("etc", str(arena.sentinel))),
        tar_of(dir_("etc"), reg("etc/passwd", "root:x:0:0")),
    )
    assert (dest / "etc").is_dir() and not (dest / "etc").is_symlink()
    assert (dest / "etc/passwd").read_text() == "root:x:0:0"
    arena.check_untouched()


# -- hard links ------------------------------------------------------------------------------


def test_hardlink_to_dotdot_outside_is_refused(arena: Arena) -> None:
    fails(arena, tar_of(reg("a", "x"), hard("h", "../../outside")), match="outside the root")


def test_hardlink_to_absolute_path_outside_is_resolved_inside(arena: Arena) -> None:
    secret = str(arena.sentinel / "secret")
    fails(arena, tar_of(hard("h", secret)), match="does not exist")


def test_hardlink_through_a_planted_symlink_stays_inside(arena: Arena) -> None:
    fails(
        arena,
        tar_of(sym("s", str(arena.sentinel))),
        tar_of(hard("h", "s/secret")),
        match="does not exist",
    )
    assert (arena.sentinel / "secret").stat().st_nlink == 1


def test_hardlink_to_a_symlink_links_the_symlink_itself(arena: Arena) -> None:
    dest = arena.unpack(tar_of(sym("s", str(arena.sentinel / "secret")), hard("h", "s")))
    assert (dest / "h").is_symlink()
    assert os.readlink(dest / "h") == str(arena.sentinel / "secret")
    assert (arena.sentinel / "secret").stat().st_nlink == 1
    arena.check_untouched()


def test_hardlink_to_a_directory_is_refused(arena: Arena) -> None:
    fails(arena, tar_of(dir_("d"), hard("h", "d")), match="directory")


# -- whiteouts -------------------------------------------------------------------------------


def test_whiteouts_cannot_delete_outside(arena: Arena) -> None:
    fails(arena, tar_of(reg("a", "x")), tar_of(reg("../sentinel/.wh.secret", "")), match="outside")
    secret = str(arena.sentinel)
    dest = arena.unpack(
        tar_of(sym("s", secret), reg("keep", "k")),
        tar_of(reg("s/.wh.secret", ""), reg(".wh..wh..opq", "")),
    )
    # the opaque marker at the root removed everything from the lower layer
    assert sorted(p.name for p in dest.iterdir()) == []
    arena.check_untouched()


def test_whiteout_and_opaque_only_affect_lower_layers(arena: Arena) -> None:
    dest = arena.unpack(
        tar_of(
            dir_("d"), reg("d/lower", "1"), dir_("d/sub"), reg("d/sub/lower", "2"), reg("x", "x")
        ),
        tar_of(
            dir_("d"),
            reg("d/upper", "3"),
            dir_("d/sub"),
            reg("d/sub/upper", "4"),
            reg("d/.wh..wh..opq", ""),  # after the new entries: they stay
            reg("y", "y"),
            reg(".wh.y", ""),  # same layer: y stays
            reg(".wh.x", ""),
        ),
    )
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == [
        "d",
        "d/sub",
        "d/sub/upper",
        "d/upper",
        "y",
    ]


# -- devices ---------------------------------------------------------------------------------


def test_device_nodes_are_skipped_with_a_warning_when_not_permitted(arena: Arena) -> None:
    warnings: list[str] = []
    dest = arena.unpack(
        tar_of(dir_("dev"), dev("dev/null"), reg("dev/ok", "k")),
        same_owner=False,
        warn=warnings.append,
    )
    assert not (dest / "dev/null").exists()
    assert (dest / "dev/ok").read_text() == "k"
    assert len(warnings) == 1 and "dev/null" in warnings[0]
    arena.check_untouched()


@pytest.mark.skipif(os.geteuid() != 0, reason="creating device nodes needs root")
def test_device_nodes_are_created_as_root(arena: Arena) -> None:
    warnings: list[str] = []
    dest = arena.unpack(tar_of(dir_("dev"), dev("dev/null")), warn=warnings.append)
    if warnings:  # a container without CAP_MKNOD
        assert "dev/null" in warnings[0]
        assert not (dest / "dev/null").exists()
    else:
        st = (dest / "dev/null").lstat()
        assert stat.S_ISCHR(st.st_mode)
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)


# -- modes, read-only directories, failure cleanup -------------------------------------------


def test_read_only_directories_are_filled_before_their_mode_is_set(arena: Arena) -> None:
    dest = arena.unpack(
        tar_of(dir_("ro", 0o555), reg("ro/a", "a")),
        tar_of(dir_("ro", 0o555), reg("ro/b", "b")),
    )
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o555
    assert sorted(p.name for p in (dest / "ro").iterdir()) == ["a", "b"]


def test_failure_in_a_late_layer_leaves_nothing(arena: Arena) -> None:
    fails(
        arena,
        tar_of(dir_("ro", 0o500), reg("ro/a", "a")),
        tar_of(reg("b", "b"), hard("c", "missing")),
        match="does not exist",
    )


def test_truncated_layer_is_an_error(arena: Arena) -> None:
    data = tar_of(reg("big", b"z" * 100_000))
    w = LayoutWriter(arena.layouts / "trunc")
    cut = data[:50_000]
    layer = Layer(w.blob(gzip_bytes(cut), OCI_LAYER_GZIP), sha256_digest(cut), len(cut))
    img = w.image([layer], AMD64)
    w.finish("trunc", "v1", img.manifest, img.manifest_bytes, [img])
    with pytest.raises(LayoutError, match="truncated"), open_image(str(w.path)) as image:
        unpack_image(image, arena.dest)
    assert not arena.dest.exists()
    arena.check_untouched()


# -- the tar reader --------------------------------------------------------------------------


def entries_of(data: bytes, chunk: int = 7) -> list[tuple[str, str, int, str]]:
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    reader = TarReader(pieces)
    out = []
    for e in reader:
        content = b"".join(bytes(p) for p in reader.data()) if e.kind == "file" else b""
        out.append((e.path, e.kind, len(content), e.linkname))
    return out


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_reader_formats_and_long_names(fmt: int) -> None:
    ustar = fmt == tarfile.USTAR_FORMAT  # 155 + 100 byte names, 100 byte link names
    long_dir = "d" * (60 if ustar else 120)
    long_name = f"{long_dir}/{'f' * (30 if ustar else 90)}"
    data = tar_of(
        dir_(long_dir),
        reg(long_name, b"q" * 1000),
        sym("s", "t" * (150 if fmt != tarfile.USTAR_FORMAT else 90)),
        hard("h", long_name),
        fmt=fmt,
    )
    assert entries_of(data) == [
        (long_dir, "dir", 0, ""),
        (long_name, "file", 1000, ""),
        ("s", "symlink", 0, "t" * (150 if fmt != tarfile.USTAR_FORMAT else 90)),
        ("h", "hardlink", 0, long_name),
    ]


def test_tar_reader_pax_xattrs_and_numbers() -> None:
    info, body = reg("f", "x")
    info.pax_headers = {"SCHILY.xattr.user.test": "value", "uid": "70000", "mtime": "1.5"}
    data = tar_of((info, body))
    reader = TarReader([data])
    (e,) = list(reader)
    assert e.xattrs == {"user.test": b"value"}
    assert e.uid == 70000 and e.mtime == 1.5


def test_tar_reader_rejects_garbage() -> None:
    with pytest.raises(LayoutError, match="invalid tar header"):
        list(TarReader([b"this is not a tar archive".ljust(1024, b"!")]))


def test_clean_path() -> None:
    assert clean_path("/etc//x/./y/") == "etc/x/y"
    assert clean_path("./") == ""
    assert clean_path("a/b/../c") == "a/c"
    for bad in ("..", "../a", "a/../../b", "/../x"):
        with pytest.raises(LayoutError):
            clean_path(bad)


def test_tar_reader_base256_numbers_fall_back_to_tarfile() -> None:
    info, body = reg("big-uid", "x")
    info.uid = 3_000_000  # more than 7 octal digits: GNU writes base-256
    data = tar_of((info, body), fmt=tarfile.GNU_FORMAT)
    (e,) = list(TarReader([data]))
    assert (e.path, e.uid, e.size) == ("big-uid", 3_000_000, 1)
