"""``derrick cache info`` and ``derrick cache prune`` against a cache a real pull filled:
what it holds, counted; emptied only while no other derrick process uses it; layouts
untouched; the next pull downloads again."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.cli import Cli, Isolation, run_subprocess
from support.seed import SeededRegistries


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def store_in_use(root: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process using the blob store at ``root`` (as a pull does) until the block ends."""
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from derrick.store.cache import BlobStore
        store = BlobStore(Path({str(root)!r}))
        store.use.hold()
        print("using", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "using\n"
        yield proc
    finally:
        proc.communicate("", timeout=30)


def test_prune_empties_the_cache_only_while_nobody_uses_it(
    cli: Cli, seeded: SeededRegistries, env: Isolation, tmp_path: Path
) -> None:
    image = seeded.open["test/eight"]
    blobs = image.layout.image.blob_digests
    layers = image.layout.image.layers
    total = image.layout.image.config.size + sum(layer.size for layer in layers)
    cli("image", "pull", image.reference, "-o", tmp_path / "first").ok()
    stale = env.cache / "blobs" / "sha256" / f"{'0' * 64}.partial"
    stale.write_bytes(b"left by a run that was killed")

    info = json.loads(cli("cache", "info", "--format", "json").ok().out)
    assert info == {
        "path": str(env.cache),
        "blobs": len(blobs),
        "blobBytes": total,
        "partials": 1,
        "partialBytes": stale.stat().st_size,
    }
    text = cli("cache", "info").ok().out
    assert text.startswith(f"{env.cache}: {len(blobs)} blobs (") and "1 partial download" in text

    gc.collect()  # the in-process pull's store is gone, and its lock with it
    with store_in_use(env.cache):
        busy = run_subprocess("cache", "prune")
        assert busy.code == 1, busy.err
        assert busy.err_lines == [
            f"derrick: error: the blob cache {env.cache} is in use by another derrick "
            "process; nothing was removed; run the command again"
        ]
    assert json.loads(cli("cache", "info", "--format", "json").ok().out) == info

    done = run_subprocess("cache", "prune", "--format", "json")
    assert done.code == 0, done.err
    assert json.loads(done.out) == info
    after = json.loads(cli("cache", "info", "--format", "json").ok().out)
    assert (after["blobs"], after["partials"], after["blobBytes"]) == (0, 0, 0)
    assert not stale.exists() and not (env.cache / "verified").exists()

    # the layout has files of its own, and the next pull downloads every blob again
    for b in blobs:
        path = tmp_path / "first" / "blobs" / "sha256" / b.split(":")[1]
        assert sha256_file(path) == b
    r = cli("image", "pull", image.reference, "-o", tmp_path / "second", "--format", "json")
    assert json.loads(r.ok().out)["downloadedBytes"] == total
    assert json.loads(cli("cache", "info", "--format", "json").ok().out)["blobs"] == len(blobs)


def test_a_missing_cache_holds_nothing_and_is_not_made(cli: Cli, tmp_path: Path) -> None:
    where = tmp_path / "no-cache"
    assert cli("cache", "info", "--cache-dir", where).ok().out == f"{where}: 0 blobs (0 B)\n"
    assert cli("cache", "prune", "--cache-dir", where).ok().out == (
        f"Removed 0 blobs (0 B) from {where}\n"
    )
    assert not where.exists()


def test_a_cache_that_is_no_directory_is_refused(cli: Cli, tmp_path: Path) -> None:
    """A FIFO (click's check of --cache-dir refuses a regular file itself)."""
    where = tmp_path / "a-fifo"
    os.mkfifo(where)
    for verb in ("info", "prune"):
        line = cli("cache", verb, "--cache-dir", where).failed()
        assert line == (
            f"derrick: error: the blob cache {where} is not a directory; "
            "name the cache directory with --cache-dir or DERRICK_CACHE_DIR"
        )
    assert stat.S_ISFIFO(where.lstat().st_mode)
