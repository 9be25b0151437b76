"""derrick against skopeo on this machine, in the same run.

Starts a local registry, pushes a generated image of incompressible layers
(default: 4 x 256 MiB = 1 GiB), then times, repeatedly and alternating:

* pull to an OCI layout:    ``derrick image pull``  vs ``skopeo copy docker://… oci:…``
* pull to a docker-archive: ``derrick image pull``  vs ``skopeo copy docker://… docker-archive:…``
* registry to registry:     ``derrick image copy``  vs ``skopeo copy docker://… docker://…``

and prints the median wall time, throughput, the ratio derrick/skopeo and the
peak RSS of each.  Every derrick run starts with an empty blob cache, so each
pull really downloads every byte.

Usage:  python benchmarks/bench.py [--runs 3] [--layers 4] [--layer-mib 256] [--only pull|copy]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.images import make_big_image, push_with_skopeo  # noqa: E402
from tests.support.registry import RegistryProcess, start_registry  # noqa: E402

MiB = 1024 * 1024
GNU_TIME = "/usr/bin/time"


@dataclass
class Sample:
    seconds: float
    max_rss_kib: int


@dataclass
class Case:
    name: str
    tool: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def peak_rss_mib(self) -> float:
        return max(s.max_rss_kib for s in self.samples) / 1024


def run_measured(cmd: list[str], env: dict[str, str]) -> Sample:
    """Run ``cmd``; its wall time and its own peak RSS.

    The command runs under GNU time: a child forked straight from this (large)
    Python process would inherit its resident size as a starting high-water mark.
    """
    rss_file = Path(tempfile.mkstemp(prefix="derrick-bench-rss-")[1])
    start = time.perf_counter()
    proc = subprocess.run(
        [GNU_TIME, "-f", "%M", "-o", str(rss_file), *cmd],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    elapsed = time.perf_counter() - start
    rss = rss_file.read_text().strip().splitlines()
    rss_file.unlink()
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{err}")
    return Sample(elapsed, int(rss[-1]))


def settle() -> None:
    """Flush dirty pages so one run's writeback does not slow the next."""
    subprocess.run(["sync"], check=False)


def skopeo_base(home: Path) -> list[str]:
    return ["skopeo", "--insecure-policy", "--tmpdir", str(home / "tmp")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--layer-mib", type=int, default=256)
    ap.add_argument("--jobs", type=int, default=None, help="derrick --jobs (default: its own)")
    ap.add_argument("--only", choices=["pull", "copy"], default=None)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp dir under /var/tmp")
    args = ap.parse_args()
    if not Path(GNU_TIME).exists():
        raise SystemExit(f"{GNU_TIME} is needed to measure peak memory: apt-get install time")

    work = Path(tempfile.mkdtemp(prefix="derrick-bench-", dir=args.workdir or "/var/tmp"))
    regs: list[RegistryProcess] = []
    try:
        home = work / "home"
        (home / "tmp").mkdir(parents=True)
        env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(home / "run"))
        (home / "run").mkdir(mode=0o700)
        total = args.layers * args.layer_mib * MiB
        print(f"generating {args.layers} x {args.layer_mib} MiB image ...", file=sys.stderr)
        image = make_big_image(
            work / "src-layout", layers=args.layers, layer_size=args.layer_mib * MiB
        )
        src = start_registry(work / "reg-src", name="src")
        regs.append(src)
        push_with_skopeo(image, "big", src, "bench/big")
        src_ref = f"{src.host}/bench/big:big"

        jobs = ["--jobs", str(args.jobs)] if args.jobs else []
        derrick = [sys.executable, "-m", "derrick.cli.main"]
        cases: dict[str, dict[str, Case]] = {}

        def measure(name: str, tool: str, make_cmd: Callable[[Path], list[str]]) -> None:
            case = cases.setdefault(name, {}).setdefault(tool, Case(name, tool))
            scratch = work / "scratch"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            run_env = dict(env, DERRICK_CACHE_DIR=str(scratch / "cache"))
            settle()
            case.samples.append(run_measured(make_cmd(scratch), run_env))
            shutil.rmtree(scratch, ignore_errors=True)

        def fresh_destination(n: int) -> RegistryProcess:
            """An empty registry, so no run can mount or skip what an earlier one pushed."""
            reg = start_registry(work / f"reg-dst-{n}", name=f"dst{n}")
            regs.append(reg)
            return reg

        sk = skopeo_base(home)
        from_src = [*sk, "copy", "-q", "--src-tls-verify=false"]
        # Pulls first, then copies: the copies leave gigabytes for the kernel to write
        # back, which would slow whichever pull came next.
        phases = [p for p in ("pull", "copy") if args.only in (None, p)]
        for phase, run in [(p, r) for p in phases for r in range(args.runs)]:
            print(f"{phase} run {run + 1}/{args.runs} ...", file=sys.stderr)
            if phase == "pull":
                measure(
                    "pull to OCI layout",
                    "derrick",
                    lambda d: [*derrick, "image", "pull", "-q", *jobs, src_ref, "-o", f"{d}/oci"],
                )
                measure(
                    "pull to OCI layout",
                    "skopeo",
                    lambda d: [*from_src, f"docker://{src_ref}", f"oci:{d}/oci:big"],
                )
                measure(
                    "pull to docker-archive",
                    "derrick",
                    lambda d: [*derrick, "image", "pull", "-q", *jobs, src_ref, "-o", f"{d}/i.tar"],
                )
                measure(
                    "pull to docker-archive",
                    "skopeo",
                    lambda d: [
                        *from_src,
                        f"docker://{src_ref}",
                        f"docker-archive:{d}/i.tar:bench/big:big",
                    ],
                )
            if phase == "copy":
                dst_d = fresh_destination(2 * run).host
                measure(
                    "copy registry to registry",
                    "derrick",
                    lambda d, h=dst_d: [
                        *derrick,
                        "image",
                        "copy",
                        "-q",
                        *jobs,
                        src_ref,
                        f"{h}/bench/big:big",
                    ],
                )
                dst_s = fresh_destination(2 * run + 1).host
                measure(
                    "copy registry to registry",
                    "skopeo",
                    lambda d, h=dst_s: [
                        *from_src,
                        "--dest-tls-verify=false",
                        f"docker://{src_ref}",
                        f"docker://{h}/bench/big:big",
                    ],
                )
                for reg in regs[1:]:
                    reg.stop()
                del regs[1:]

        print()
        print(
            f"image: {args.layers} layers, {total / MiB:.0f} MiB; runs: {args.runs}; "
            f"cores: {os.cpu_count()}"
        )
        header = (
            f"{'case':28} {'tool':8} {'median s':>9} {'MB/s':>8} {'peak RSS MiB':>13} {'ratio':>7}"
        )
        print(header)
        print("-" * len(header))
        for name, tools in cases.items():
            base = tools.get("skopeo")
            for tool, case in tools.items():
                ratio = f"{case.median / base.median:.2f}" if base and tool == "derrick" else ""
                print(
                    f"{name:28} {tool:8} {case.median:9.2f} {total / case.median / 1e6:8.0f} "
                    f"{case.peak_rss_mib:13.1f} {ratio:>7}"
                )
    finally:
        for r in regs:
            r.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
