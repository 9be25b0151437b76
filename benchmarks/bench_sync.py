"""Mirroring many small images: ``derrick sync`` against ``skopeo sync``, in the same run.

Generates 100 small images (5 repositories x 20 tags) into a local registry.  Every image
has a base layer shared by all of them, a layer shared within its repository and a layer
of its own (defaults: 2 MiB, 512 KiB and 64 KiB of incompressible bytes, each gzipped
with a fixed header so that shared layers are the same blob), and a config.  derrick runs
from compiled bytecode, as when installed.
Then, for each run, alternating which tool goes first, each tool gets a fresh, empty
destination registry and:

* **first sync**: everything copied.  derrick: ``derrick sync CONFIG.yaml`` naming the 5
  repositories; skopeo: ``skopeo sync --src docker --dest docker SRC/REPO DST/mirror`` once
  per repository, as users run it.
* **second sync**: the same again, nothing having changed.  The destination registry's log
  of that run says whether any blob was uploaded or mounted, and the source's whether any
  blob was downloaded.

Prints the median and min-max wall time of each, derrick's ratio to skopeo, the CPU time
of the tool and of the two registries (medians; less sensitive than wall time to other
work on the machine), and the blob traffic of the second syncs, and checks the targets
(first sync <= 0.5 x skopeo's, second sync <= 0.2 x skopeo's and no blob bytes moved).

Usage:  python benchmarks/bench_sync.py [--runs 3] [--repos 5] [--tags 20]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.rawclient import RawClient  # noqa: E402
from tests.support.registry import RegistryProcess, start_registry  # noqa: E402

KiB = 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
_BLOB_WRITE = re.compile(r'"(?:PUT|PATCH|POST) /v2/[^"]*/blobs/uploads/[^"]*" (\d+)')
_BLOB_GET = re.compile(r'"GET /v2/[^"]*/blobs/sha256:[0-9a-f]+ [^"]*" (\d+)')


@dataclass
class Case:
    samples: list[float] = field(default_factory=list)
    tool_cpu: list[float] = field(default_factory=list)  # the tool's processes, user + system
    registry_cpu: list[float] = field(default_factory=list)  # both registries
    blob_writes: list[int] = field(default_factory=list)  # second sync: upload requests
    blob_reads: list[int] = field(default_factory=list)  # second sync: blob downloads

    def summary(self) -> str:
        s = self.samples
        return f"{statistics.median(s):7.2f} s  ({min(s):.2f}-{max(s):.2f})"

    def cpu(self) -> str:
        tool, regs = statistics.median(self.tool_cpu), statistics.median(self.registry_cpu)
        return f"{tool:5.2f} s + {regs:5.2f} s"


def registry_cpu(*regs: RegistryProcess) -> float:
    """The CPU time (user + system) the registries' processes have used so far."""
    total = 0.0
    for reg in regs:
        assert reg.process is not None
        fields = Path(f"/proc/{reg.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_case(
    case: Case, cmds: list[list[str]], env: dict[str, str], *regs: RegistryProcess
) -> None:
    """Time ``cmds`` (wall and CPU) into ``case``."""
    before, regs_before = os.times(), registry_cpu(*regs)
    case.samples.append(timed(cmds, env))
    after = os.times()
    case.tool_cpu.append(
        after.children_user - before.children_user + after.children_system - before.children_system
    )
    case.registry_cpu.append(registry_cpu(*regs) - regs_before)


def blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def generate(src: RegistryProcess, repos: int, tags: int, sizes: tuple[int, int, int]) -> int:
    """Push the images; the bytes of the distinct blobs."""
    rng = random.Random(11)
    base = rng.randbytes(sizes[0])
    total = len(base)
    with RawClient(src) as raw:
        for r in range(repos):
            repo = f"bench/r{r}"
            shared = rng.randbytes(sizes[1])
            total += len(shared)
            for t in range(tags):
                own = rng.randbytes(sizes[2])
                total += len(own)
                layers = [
                    blob(gzip.compress(x, compresslevel=0, mtime=0)) for x in (base, shared, own)
                ]
                diff_ids = ["sha256:" + hashlib.sha256(x).hexdigest() for x in (base, shared, own)]
                config = json.dumps(
                    {
                        "architecture": "amd64",
                        "os": "linux",
                        "created": "2024-01-01T00:00:00Z",
                        "config": {"Labels": {"tag": f"{r}.{t}"}},
                        "rootfs": {"type": "layers", "diff_ids": diff_ids},
                    },
                    sort_keys=True,
                ).encode()
                cfg = blob(config)
                for digest, data in [cfg, *layers]:
                    if not raw.blob_exists(repo, digest):
                        raw.push_blob(repo, data)
                manifest = {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": cfg[0], "size": len(cfg[1])},
                    "layers": [
                        {"mediaType": OCI_LAYER_GZIP, "digest": d, "size": len(b)}
                        for d, b in layers
                    ],
                }
                raw.put_manifest(repo, f"1.{t}", json.dumps(manifest).encode(), OCI_MANIFEST)
    return total


def timed(cmds: list[list[str]], env: dict[str, str]) -> float:
    start = time.perf_counter()
    for cmd in cmds:
        proc = subprocess.run(cmd, env=env, capture_output=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.decode(errors='replace')}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repos", type=int, default=5)
    ap.add_argument("--tags", type=int, default=20)
    ap.add_argument("--sizes-kib", default="2048,512,64", help="base,repository,own layer")
    ap.add_argument("--jobs", type=int, default=None, help="derrick sync --jobs (default: its own)")
    args = ap.parse_args()
    sizes = tuple(int(x) * KiB for x in args.sizes_kib.split(","))
    assert len(sizes) == 3

    work = Path(tempfile.mkdtemp(prefix="derrick-bench-sync-", dir="/var/tmp"))
    regs: list[RegistryProcess] = []
    try:
        home = work / "home"
        (home / "tmp").mkdir(parents=True)
        (home / "run").mkdir(mode=0o700)
        env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(home / "run"))
        # derrick runs from compiled bytecode, as an installed package does (pip compiles
        # it): an environment that forbids writing .pyc files would have every run compile
        # derrick's modules again (~50 ms)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "derrick")],
            env=env,
            check=True,
            capture_output=True,
        )
        src = start_registry(work / "reg-src", name="src")
        regs.append(src)
        print(f"generating {args.repos} x {args.tags} images ...", file=sys.stderr)
        total = generate(src, args.repos, args.tags, sizes)  # type: ignore[arg-type]
        repos = [f"bench/r{r}" for r in range(args.repos)]
        derrick = [sys.executable, "-m", "derrick.cli.main", "sync", "-q", "--insecure"]
        if args.jobs:
            derrick += ["--jobs", str(args.jobs)]
        skopeo = ["skopeo", "--insecure-policy", "--tmpdir", str(home / "tmp"), "sync"]
        skopeo += ["--src", "docker", "--dest", "docker"]
        skopeo += ["--src-tls-verify=false", "--dest-tls-verify=false"]
        cases = {(tool, phase): Case() for tool in ("derrick", "skopeo") for phase in (1, 2)}

        def commands(tool: str, dst: RegistryProcess, scratch: Path) -> list[list[str]]:
            if tool == "skopeo":
                return [[*skopeo, f"{src.host}/{r}", f"{dst.host}/mirror"] for r in repos]
            config = scratch / "sync.yaml"
            sources = "".join(f"  - repository: {src.host}/{r}\n" for r in repos)
            config.write_text(
                f"defaults:\n  destination: {{registry: {dst.host}, prefix: mirror}}\n"
                f"sources:\n{sources}"
            )
            return [[*derrick, str(config)]]

        n = 0
        for run in range(args.runs):
            order = ("derrick", "skopeo") if run % 2 == 0 else ("skopeo", "derrick")
            for tool in order:
                print(f"run {run + 1}/{args.runs}: {tool} ...", file=sys.stderr)
                n += 1
                dst = start_registry(work / f"reg-dst-{n}", name=f"dst{n}")
                regs.append(dst)
                scratch = work / f"scratch-{n}"
                scratch.mkdir()
                run_env = dict(env, DERRICK_CACHE_DIR=str(scratch / "cache"))
                cmds = commands(tool, dst, scratch)
                run_case(cases[(tool, 1)], cmds, run_env, src, dst)
                dst_log, src_log = dst.log_size(), src.log_size()
                run_case(cases[(tool, 2)], cmds, run_env, src, dst)
                time.sleep(0.2)  # the registries write their last log lines
                cases[(tool, 2)].blob_writes.append(
                    len(_BLOB_WRITE.findall(dst.log_since(dst_log)))
                )
                cases[(tool, 2)].blob_reads.append(len(_BLOB_GET.findall(src.log_since(src_log))))
                mirrored = "mirror/r{}" if tool == "skopeo" else "mirror/bench/r{}"
                with RawClient(dst) as raw:
                    got = sum(len(raw.tags(mirrored.format(r))) for r in range(args.repos))
                if got != args.repos * args.tags:
                    raise SystemExit(f"{tool} mirrored {got} tags, not {args.repos * args.tags}")
                dst.stop()
                regs.remove(dst)
                shutil.rmtree(scratch, ignore_errors=True)

        print()
        print(
            f"{args.repos * args.tags} images ({args.repos} repositories x {args.tags} tags), "
            f"{total / KiB / KiB:.1f} MiB of distinct blobs; runs: {args.runs}; "
            f"cores: {os.cpu_count()}"
        )
        header = (
            f"{'sync':8} {'tool':8} {'median (min-max)':>24} {'ratio':>6}  "
            f"{'CPU tool + registries':>21}  second-sync blobs"
        )
        print(header)
        print("-" * len(header))
        ratios = {}
        for phase, label in ((1, "first"), (2, "second")):
            for tool in ("derrick", "skopeo"):
                case = cases[(tool, phase)]
                ratio = ""
                if tool == "derrick":
                    base = statistics.median(cases[("skopeo", phase)].samples)
                    ratios[phase] = statistics.median(case.samples) / base
                    ratio = f"{ratios[phase]:.2f}"
                traffic = ""
                if phase == 2:
                    traffic = (
                        f"uploads/mounts {max(case.blob_writes)}, downloads {max(case.blob_reads)}"
                    )
                print(
                    f"{label:8} {tool:8} {case.summary():>24} {ratio:>6}  {case.cpu():>21}  "
                    f"{traffic}"
                )
        moved = max(cases[("derrick", 2)].blob_writes) + max(cases[("derrick", 2)].blob_reads)
        print()
        print(f"first sync  <= 0.5 x skopeo: {'yes' if ratios[1] <= 0.5 else 'NO'}")
        print(f"second sync <= 0.2 x skopeo: {'yes' if ratios[2] <= 0.2 else 'NO'}")
        print(f"second sync moved no blob:   {'yes' if moved == 0 else 'NO'}")
    finally:
        for r in regs:
            r.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
