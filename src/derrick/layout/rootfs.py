"""A root filesystem built from layer tars, safely: :class:`RootTree`.

Changes are applied as the OCI image-spec's layer changesets say: ``.wh.NAME`` deletes
NAME from lower layers, ``.wh..wh..opq`` empties a directory of lower-layer content, and
either only affects what lower layers wrote.  Everything is reached through directory
file descriptors: each parent component of a path is resolved inside the root (a symlink
an earlier layer planted is followed as if the root were ``/``, so ``a -> /tmp/outside``
then ``a/pwned`` lands at ``ROOT/tmp/outside/pwned``) and the last component is never
followed (``O_NOFOLLOW``, ``lstat``).  Hard links may only name paths inside the root.
Directory owners, modes and times are applied last (:meth:`RootTree.finish`), deepest
first, once nothing changes them any more.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Sequence

from derrick.errors import LayoutError
from derrick.layout.tarread import TarEntry, TarReader

__all__ = ["RootTree", "Warn"]

#: Receives a message about an entry that could not be made as the layer says.
Warn = Callable[[str], None]

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_SYMLINKS = 40
_DIR_CACHE = 128


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _rmtree_at(dir_fd: int, name: str, st: os.stat_result) -> None:
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fd = os.open(name, _O_DIR, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as it:
            children = [(e.name, e.stat(follow_symlinks=False)) for e in it]
        for child, cst in children:
            _rmtree_at(fd, child, cst)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


class RootTree:
    """The root filesystem being built in the existing directory ``root``, reached only
    through directory descriptors (close it when done).  ``same_owner`` applies the tar
    owners; ``warn`` hears of entries skipped.  Set :attr:`label` (for messages) and a
    new :attr:`layer_paths` before each layer."""

    def __init__(self, root: str, *, same_owner: bool, warn: Warn) -> None:
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.same_owner = same_owner
        self.warn = warn
        self._dirs: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._stale = False
        self.dir_meta: dict[str, tuple[TarEntry, int]] = {}
        self.removed: dict[str, int] = {}
        self.gen = 0
        self.layer_paths: set[str] = set()
        self.label = "layer"
        self.files = 0
        self.skipped = 0

    def close(self) -> None:
        self._forget_dirs()
        os.close(self.fd)

    def _forget_dirs(self) -> None:
        for fd, _ in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    # -- resolving -------------------------------------------------------

    def _walk(self, parts: Sequence[str], create: bool) -> tuple[int, str] | None:
        """Open the directory ``parts`` leads to, following symlinks only inside the root."""
        fds = [os.dup(self.fd)]
        names: list[str] = []
        pending = list(reversed(parts))
        hops = 0
        try:
            while pending:
                c = pending.pop()
                if c in ("", "."):
                    continue
                if c == "..":
                    if names:
                        names.pop()
                        os.close(fds.pop())
                    continue
                cur = fds[-1]
                st = _lstat(c, cur)
                if st is None:
                    if not create:
                        return None
                    os.mkdir(c, 0o755, dir_fd=cur)
                elif stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > _MAX_SYMLINKS:
                        raise LayoutError(
                            f"{self.label}: too many levels of symbolic links resolving "
                            f"{'/'.join(parts)!r}"
                        )
                    target = os.readlink(c, dir_fd=cur)
                    if target.startswith("/"):
                        while len(fds) > 1:
                            os.close(fds.pop())
                        names.clear()
                    pending.extend(reversed(target.split("/")))
                    continue
                elif not stat.S_ISDIR(st.st_mode):
                    if not create:
                        return None
                    raise LayoutError(
                        f"{self.label}: cannot create {'/'.join(parts)!r}: "
                        f"{_join('/'.join(names), c)!r} is not a directory"
                    )
                fds.append(os.open(c, _O_DIR, dir_fd=cur))
                names.append(c)
            return fds.pop(), "/".join(names)
        finally:
            for fd in fds:
                os.close(fd)

    def dir(self, parts: Sequence[str], *, create: bool = True) -> tuple[int, str] | None:
        """``(fd, canonical path)`` of a directory; the fd belongs to the cache."""
        if self._stale:  # closed only now: the caller's descriptors stay valid until here
            self._forget_dirs()
            self._stale = False
        key = "/".join(parts)
        hit = self._dirs.get(key)
        if hit is not None:
            self._dirs.move_to_end(key)
            return hit
        found = None
        if parts:  # one step from the (cached) parent; anything unusual takes the long walk
            parent = self.dir(parts[:-1], create=create)
            if parent is None:
                return None
            found = self._step(parent, parts[-1], create)
        if found is None:
            found = self._walk(parts, create)
            if found is None:
                return None
        self._dirs[key] = found
        if len(self._dirs) > _DIR_CACHE:
            _, (old, _) = self._dirs.popitem(last=False)
            os.close(old)
        return found

    def _step(self, parent: tuple[int, str], name: str, create: bool) -> tuple[int, str] | None:
        """Open (or make) the plain directory ``name`` in ``parent``; None if it is not one."""
        pfd, pcanon = parent
        try:
            fd = os.open(name, _O_DIR, dir_fd=pfd)
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(name, 0o755, dir_fd=pfd)
            fd = os.open(name, _O_DIR, dir_fd=pfd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                return None  # a symlink or not a directory
            raise
        return fd, _join(pcanon, name)

    # -- changing --------------------------------------------------------

    def _touch(self, canon: str) -> None:
        paths = self.layer_paths
        while canon and canon not in paths:
            paths.add(canon)
            canon = canon.rpartition("/")[0]

    def _remove(self, dir_fd: int, name: str, st: os.stat_result, canon: str) -> None:
        if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            self._stale = True  # cached resolutions may pass through it
            self.gen += 1
            self.removed[canon] = self.gen
        _rmtree_at(dir_fd, name, st)

    def _remove_lower(self, dir_fd: int, dir_canon: str, name: str) -> None:
        """Delete ``name`` as far as lower layers made it (keep this layer's entries)."""
        canon = _join(dir_canon, name)
        st = _lstat(name, dir_fd)
        if st is None:
            return
        if canon not in self.layer_paths:
            self._remove(dir_fd, name, st, canon)
        elif stat.S_ISDIR(st.st_mode):
            fd = os.open(name, _O_DIR, dir_fd=dir_fd)
            try:
                for child in os.listdir(fd):
                    self._remove_lower(fd, canon, child)
            finally:
                os.close(fd)

    def whiteout(self, directory: str, name: str | None) -> None:
        if name == "":
            return
        if name in (".", ".."):
            raise LayoutError(f"{self.label}: invalid whiteout {_join(directory, '.wh.' + name)!r}")
        found = self.dir(directory.split("/") if directory else [], create=False)
        if found is None:
            return
        fd, canon = found
        if name is None:
            for child in os.listdir(fd):
                self._remove_lower(fd, canon, child)
        else:
            self._remove_lower(fd, canon, name)

    def apply(self, entry: TarEntry, reader: TarReader) -> None:
        parts = entry.path.split("/") if entry.path else []
        if not parts:
            if entry.kind != "dir":
                raise LayoutError(f"{self.label}: a {entry.kind} entry replaces the root")
            self.gen += 1
            self.dir_meta[""] = (entry, self.gen)
            return
        found = self.dir(parts[:-1])
        assert found is not None
        pfd, pcanon = found
        name = parts[-1]
        canon = _join(pcanon, name)
        self._touch(canon)
        kind = entry.kind
        if kind == "file":
            self._write_file(pfd, name, canon, entry, reader)
            return
        st = _lstat(name, pfd)
        if kind == "dir":
            if st is None or not stat.S_ISDIR(st.st_mode):
                if st is not None:
                    self._remove(pfd, name, st, canon)
                os.mkdir(name, 0o755, dir_fd=pfd)
            self.gen += 1
            self.dir_meta[canon] = (entry, self.gen)
            return
        if kind == "hardlink":
            self._link(pfd, name, canon, st, entry)
            return
        if st is not None:
            self._remove(pfd, name, st, canon)
        if kind == "symlink":
            os.symlink(entry.linkname, name, dir_fd=pfd)
        elif kind == "fifo":
            os.mkfifo(name, 0o600, dir_fd=pfd)
        else:
            if not self._mknod(pfd, name, entry):
                return
        self._set_meta(pfd, name, entry, is_link=kind == "symlink")

    def _mknod(self, pfd: int, name: str, entry: TarEntry) -> bool:
        what = f"{entry.kind} device {entry.path!r}"
        if not self.same_owner:
            self.warn(f"{self.label}: skipped {what}: creating devices needs root")
            self.skipped += 1
            return False
        typ = stat.S_IFCHR if entry.kind == "char" else stat.S_IFBLK
        try:
            os.mknod(name, typ | 0o600, os.makedev(entry.devmajor, entry.devminor), dir_fd=pfd)
        except PermissionError:
            self.warn(f"{self.label}: skipped {what}: not permitted here")
            self.skipped += 1
            return False
        return True

    def _write_file(
        self, pfd: int, name: str, canon: str, entry: TarEntry, reader: TarReader
    ) -> None:
        try:
            fd = os.open(name, _O_NEW_FILE, 0o600, dir_fd=pfd)
        except FileExistsError:
            st = _lstat(name, pfd)
            if st is not None:
                self._remove(pfd, name, st, canon)
            fd = os.open(name, _O_NEW_FILE, 0o600, dir_fd=pfd)
        try:
            write = os.write
            for piece in reader.data():
                while piece:
                    piece = piece[write(fd, piece) :]
            self._set_fd_meta(fd, entry)
        finally:
            os.close(fd)
        self.files += 1

    def _link(
        self, pfd: int, name: str, canon: str, st: os.stat_result | None, entry: TarEntry
    ) -> None:
        tparts = entry.linkname.split("/")
        found = self.dir(tparts[:-1], create=False)
        tst = _lstat(tparts[-1], found[0]) if found is not None else None
        if found is None or tst is None:
            raise LayoutError(
                f"{self.label}: hard link {entry.path!r} points to {entry.linkname!r}, "
                "which does not exist"
            )
        if stat.S_ISDIR(tst.st_mode):
            raise LayoutError(
                f"{self.label}: hard link {entry.path!r} points to the directory {entry.linkname!r}"
            )
        tfd = found[0]
        if st is not None:
            if (st.st_dev, st.st_ino) == (tst.st_dev, tst.st_ino):
                return
            self._remove(pfd, name, st, canon)
        os.link(tparts[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)

    def _set_meta(self, pfd: int, name: str, entry: TarEntry, *, is_link: bool) -> None:
        if self.same_owner:
            os.chown(name, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
        if not is_link:
            os.chmod(name, entry.mode, dir_fd=pfd)
        ns = int(entry.mtime * 1e9)
        os.utime(name, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)

    def _set_fd_meta(self, fd: int, entry: TarEntry) -> None:
        """The entry's owner (with ``same_owner``), mode, xattrs and mtime, on the open
        file or directory ``fd``."""
        if self.same_owner:
            os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.mode)
        if entry.xattrs:
            self._xattrs(fd, entry)
        ns = int(entry.mtime * 1e9)
        os.utime(fd, ns=(ns, ns))

    def _xattrs(self, fd: int, entry: TarEntry) -> None:
        for key, value in (entry.xattrs or {}).items():
            try:
                os.setxattr(fd, key, value)
            except OSError as e:
                self.warn(f"{self.label}: could not set {key} on {entry.path!r}: {e.strerror}")

    def finish(self) -> None:
        """Apply directory owners, modes and mtimes, deepest first, now nothing changes them."""
        root_seen = False
        for canon, (entry, gen) in sorted(
            self.dir_meta.items(), key=lambda item: (-item[0].count("/") - bool(item[0]), item[0])
        ):
            if self._removed_since(canon, gen):
                continue
            # A path whose components were all left in place since: no symlink on the way.
            found = self.dir(canon.split("/") if canon else [], create=False)
            if found is None or found[1] != canon:
                continue
            root_seen = root_seen or not canon
            self._set_fd_meta(found[0], entry)
        if not root_seen:
            os.fchmod(self.fd, 0o755)

    def _removed_since(self, canon: str, gen: int) -> bool:
        path = canon
        while True:
            if self.removed.get(path, -1) > gen:
                return True
            if not path:
                return False
            path = path.rpartition("/")[0]
