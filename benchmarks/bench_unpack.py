"""derrick image unpack against umoci unpack --rootless, on this machine, in the same run.

Generates an OCI layout with one image of gzip layers (default about 300 MiB
uncompressed): a layer of many small files, a layer of a few big files, and a
layer that deletes and replaces some of both.  File contents are text-like
(they compress about 3:1, as real layers do).  Then it times, alternating:

* ``derrick image unpack LAYOUT:bench DIR``  (``--no-same-owner`` like rootless umoci)
* ``umoci unpack --rootless --image LAYOUT:bench BUNDLE``

and prints the median wall and CPU time of each, the throughput and the ratios.  Both
read the same local layout, so no registry or network is involved.  umoci also
writes an mtree manifest of the tree it unpacked (hashing every file); derrick
verifies every layer's diff_id instead.

Usage:  python benchmarks/bench_unpack.py [--runs 3] [--small-files 20000] [--big-mib 128]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.images import (  # noqa: E402
    AMD64,
    OCI_LAYER_GZIP,
    Layer,
    LayoutWriter,
    sha256_digest,
)

MiB = 1024 * 1024
MTIME = 1704067200


def text_pool(size: int, seed: int = 1) -> bytes:
    """Pseudo-text: words from a fixed vocabulary, so it compresses like source or docs."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choices(alphabet, k=rng.randint(2, 10))) for _ in range(5000)]
    line: list[str] = []
    parts: list[str] = []
    n = 0
    while n < size:
        line = rng.choices(vocab, k=12)
        s = " ".join(line) + "\n"
        parts.append(s)
        n += len(s)
    return "".join(parts).encode()[:size]


class TarBuilder:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tf = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.dirs: set[str] = set()

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                info.mtime = MTIME
                self.tf.addfile(info)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._parents(path)
        info = tarfile.TarInfo(path)
        info.size = len(data)
        info.mode = mode
        info.mtime = MTIME
        self.tf.addfile(info, io.BytesIO(data))

    def special(self, path: str, typ: bytes, target: str = "") -> None:
        self._parents(path)
        info = tarfile.TarInfo(path)
        info.type = typ
        info.linkname = target
        info.mtime = MTIME
        self.tf.addfile(info)

    def finish(self) -> bytes:
        self.tf.close()
        return self.buf.getvalue()


def make_bench_image(path: Path, small_files: int, big_mib: int) -> tuple[int, int]:
    """Write the layout; returns (uncompressed bytes, compressed bytes)."""
    rng = random.Random(7)
    pool = text_pool(16 * MiB)
    w = LayoutWriter(path)
    tars: list[bytes] = []

    small = TarBuilder()
    for i in range(small_files):
        size = min(int(rng.lognormvariate(8.5, 1.2)), 512 * 1024)
        off = rng.randrange(0, len(pool) - size)
        small.file(f"usr/lib/pkg{i % 200:03d}/mod{i // 200:03d}/file{i}.py", pool[off : off + size])
        if i % 500 == 0:
            small.special(f"usr/bin/tool{i}", tarfile.SYMTYPE, f"../lib/pkg{i % 200:03d}")
    tars.append(small.finish())

    big = TarBuilder()
    per = big_mib * MiB // 4
    for i in range(4):
        chunks = []
        n = 0
        while n < per:
            off = rng.randrange(0, len(pool) - MiB)
            chunks.append(pool[off : off + MiB])
            n += MiB
        big.file(f"opt/data/blob{i}.bin", b"".join(chunks)[:per])
    tars.append(big.finish())

    upper = TarBuilder()
    for i in range(0, small_files, 50):
        d = f"usr/lib/pkg{i % 200:03d}/mod{i // 200:03d}"
        upper.file(f"{d}/.wh.file{i}.py", b"")
    upper.file("opt/data/.wh.blob3.bin", b"")
    for i in range(2000):
        off = rng.randrange(0, len(pool) - 8192)
        upper.file(f"etc/conf.d/c{i}.conf", pool[off : off + 4096])
    tars.append(upper.finish())

    layers = []
    for t in tars:
        gz = zlib.compressobj(6, zlib.DEFLATED, 31)
        blob = gz.compress(t) + gz.flush()
        layers.append(Layer(w.blob(blob, OCI_LAYER_GZIP), sha256_digest(t), len(t)))
    img = w.image(layers, AMD64)
    w.finish("bench", "bench", img.manifest, img.manifest_bytes, [img])
    return sum(len(t) for t in tars), sum(layer.size for layer in layers)


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system, from wait4) of ``cmd``."""
    subprocess.run(["sync"], check=False)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err}")
    return elapsed, usage.ru_utime + usage.ru_stime


def count_tree(root: Path) -> int:
    return sum(len(d) + len(f) for _, d, f in os.walk(root))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--small-files", type=int, default=20000)
    ap.add_argument("--big-mib", type=int, default=128, help="total size of the big files")
    ap.add_argument("--same-owner", action="store_true", help="let derrick chown (as root)")
    ap.add_argument("--workdir", type=Path, help="where to put the image and the outputs")
    args = ap.parse_args()
    if shutil.which("umoci") is None:
        raise SystemExit("umoci is not installed")

    work = Path(tempfile.mkdtemp(prefix="bench-unpack-", dir=args.workdir))
    try:
        layout = work / "layout"
        t0 = time.perf_counter()
        raw, stored = make_bench_image(layout, args.small_files, args.big_mib)
        print(
            f"image: {raw / MiB:.0f} MiB uncompressed in 3 gzip layers ({stored / MiB:.0f} MiB), "
            f"generated in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        derrick = [sys.executable, "-m", "derrick.cli.main", "image", "unpack", "-q"]
        if not args.same_owner:
            derrick.append("--no-same-owner")
        times: dict[str, list[float]] = {"derrick": [], "umoci": []}
        cpu: dict[str, list[float]] = {"derrick": [], "umoci": []}
        entries = {}
        for run in range(args.runs):
            for tool in ("derrick", "umoci") if run % 2 == 0 else ("umoci", "derrick"):
                out = work / f"out-{tool}"
                shutil.rmtree(out, ignore_errors=True)
                if tool == "derrick":
                    t, c = timed([*derrick, f"{layout}:bench", str(out)])
                    entries[tool] = count_tree(out)
                else:
                    t, c = timed(
                        ["umoci", "unpack", "--rootless", "--image", f"{layout}:bench", str(out)]
                    )
                    entries[tool] = count_tree(out / "rootfs")
                times[tool].append(t)
                cpu[tool].append(c)
                print(f"  run {run + 1}: {tool:8s} {t:6.2f}s wall {c:6.2f}s cpu", flush=True)
                shutil.rmtree(out, ignore_errors=True)
        if entries["derrick"] != entries["umoci"]:
            raise SystemExit(f"the trees differ in size: {entries}")
        d = statistics.median(times["derrick"])
        u = statistics.median(times["umoci"])
        print(f"paths in the unpacked tree: {entries['derrick']}")
        dc = statistics.median(cpu["derrick"])
        uc = statistics.median(cpu["umoci"])
        print(f"derrick unpack  median {d:6.2f}s wall ({raw / MiB / d:4.0f} MiB/s), {dc:6.2f}s cpu")
        print(f"umoci unpack    median {u:6.2f}s wall ({raw / MiB / u:4.0f} MiB/s), {uc:6.2f}s cpu")
        print(f"ratio derrick/umoci: {d / u:.2f} wall, {dc / uc:.2f} cpu")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
