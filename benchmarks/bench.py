"""derrick against skopeo and against the machine's limit, on this machine, in one run.

Starts a local registry, pushes a generated image of incompressible layers (default:
4 x 256 MiB = 1 GiB), then times, repeatedly, each case's tools taking turns (the order
alternates from run to run, and ``sync`` flushes dirty pages before every measurement):

* pull to an OCI layout:    ``derrick image pull``  vs ``skopeo copy docker://… oci:…``
  vs the machine's limit: every blob fetched in parallel by ``curl`` into files, nothing
  hashed or checked;
* pull to a docker-archive: ``derrick image pull``  vs ``skopeo copy docker://… docker-archive:…``;
* registry to registry:     ``derrick image copy``  vs ``skopeo copy docker://… docker://…``
  vs the limit: per blob a ``curl GET | curl PUT`` pipeline, all blobs at once, then the
  manifest ``PUT`` -- each copy into a fresh, empty registry.

It prints, per case and tool, the median and min-max wall time, the throughput, the ratio
of derrick's median to skopeo's and to the limit's, the median and min-max CPU time (user
+ system) and the peak RSS (both measured with GNU time), and the load average before and
after (the machine may be shared).  Every derrick run starts with an empty blob cache, so
each pull really downloads every byte.  ``benchmarks/bench_startup.py`` measures start-up;
``--startup`` runs it at the end of this run too.

``--baseline SRC`` times another derrick too (its package in ``SRC/derrick``, e.g. ``git
archive OLD src | tar -x -C /tmp/old`` then ``--baseline /tmp/old/src``), as the tool
``before``, taking turns with the others.

Usage:  python benchmarks/bench.py [--runs 5] [--layers 4] [--layer-mib 256]
                                   [--only pull|copy] [--startup] [--baseline SRC]
"""

from __future__ import annotations

import argparse
import json
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

from tests.support.images import LayoutImage, make_big_image, push_with_skopeo  # noqa: E402
from tests.support.registry import RegistryProcess, start_registry  # noqa: E402

MiB = 1024 * 1024
GNU_TIME = "/usr/bin/time"


@dataclass
class Sample:
    seconds: float
    max_rss_kib: int
    user_seconds: float  # CPU time of the command and its children, in user space
    system_seconds: float  # and in the kernel

    @property
    def cpu_seconds(self) -> float:
        return self.user_seconds + self.system_seconds


@dataclass
class Case:
    name: str
    tool: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def spread(self) -> str:
        times = [s.seconds for s in self.samples]
        return f"{min(times):.2f}-{max(times):.2f}"

    @property
    def cpu_median(self) -> float:
        return statistics.median(s.cpu_seconds for s in self.samples)

    @property
    def cpu_spread(self) -> str:
        times = [s.cpu_seconds for s in self.samples]
        return f"{min(times):.2f}-{max(times):.2f}"

    @property
    def peak_rss_mib(self) -> float:
        return max(s.max_rss_kib for s in self.samples) / 1024


def run_measured(cmd: list[str], env: dict[str, str]) -> Sample:
    """Run ``cmd`` (a list, or ``["sh", "-c", script]``); its wall time, peak RSS and CPU
    time (user + system, steadier than wall time on a shared machine).

    The command runs under GNU time: a child forked straight from this (large) Python
    process would inherit its resident size as a starting high-water mark.
    """
    rss_file = Path(tempfile.mkstemp(prefix="derrick-bench-rss-")[1])
    start = time.perf_counter()
    proc = subprocess.run(
        [GNU_TIME, "-f", "%M %U %S", "-o", str(rss_file), *cmd],
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
    rss_kib, user, system = rss[-1].split()
    return Sample(elapsed, int(rss_kib), float(user), float(system))


def compile_derrick(src: Path | None = None) -> None:
    """Write derrick's bytecode once (the package in ``src``, else the one imported), as
    installing it does: each run then loads it instead of compiling every module it imports
    (which ``PYTHONDONTWRITEBYTECODE`` would otherwise make it do every time)."""
    import compileall

    import derrick

    package = src / "derrick" if src is not None else Path(derrick.__file__).parent
    compileall.compile_dir(package, quiet=1)


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def settle() -> None:
    """Flush dirty pages so one run's writeback does not slow the next."""
    subprocess.run(["sync"], check=False)


def derrick_command() -> list[str]:
    script = Path(sys.executable).parent / "derrick"
    return [str(script)] if script.exists() else [sys.executable, "-m", "derrick.cli.main"]


def blob_digests(image: LayoutImage, tag: str) -> tuple[list[str], str, str]:
    """The config and layer digests of the image, its manifest bytes' digest and media type."""
    index = json.loads((image.path / "index.json").read_text())
    desc = next(
        d
        for d in index["manifests"]
        if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    )
    manifest = json.loads((image.path / "blobs" / "sha256" / desc["digest"][7:]).read_bytes())
    blobs = [manifest["config"]["digest"], *(d["digest"] for d in manifest["layers"])]
    return blobs, desc["digest"], desc["mediaType"]


def curl_pull_script(base: str, repo: str, blobs: list[str], dest: Path) -> list[str]:
    """Every blob fetched at once by its own curl into a file: what the network and the
    disk allow, with no hashing and no checking."""
    fetches = " ".join(f"curl -sf -o {dest}/{d[7:]} {base}/v2/{repo}/blobs/{d} &" for d in blobs)
    return ["sh", "-c", f"mkdir -p {dest} && {fetches} wait"]


def curl_copy_script(
    src: str, src_repo: str, dst: str, dst_repo: str, blobs: list[str], manifest: Path, mt: str
) -> list[str]:
    """Per blob, ``curl GET | curl PUT`` into a new upload session, all blobs at once; then
    the manifest.  What two registries allow when nothing is checked on the way."""
    lines = [
        "set -e",
        "up() {",
        f"  loc=$(curl -sf -X POST -D - -o /dev/null {dst}/v2/{dst_repo}/blobs/uploads/"
        " | tr -d '\\r' | awk -F': ' 'tolower($1)==\"location\"{print $2}')",
        f'  case "$loc" in http*) ;; *) loc="{dst}$loc";; esac',
        f"  curl -sf {src}/v2/{src_repo}/blobs/$1 | curl -sf -o /dev/null -T - "
        "-H 'Content-Type: application/octet-stream' \"$loc&digest=$1\"",
        "}",
    ]
    lines += [f"up {d} &" for d in blobs]
    lines += [
        "wait",
        f"curl -sf -o /dev/null -X PUT -H 'Content-Type: {mt}' --data-binary @{manifest} "
        f"{dst}/v2/{dst_repo}/manifests/big",
    ]
    return ["sh", "-c", "\n".join(lines)]


def _with_before(
    tools: dict[str, Callable[[Path], list[str]]], derrick: list[str], before: list[str]
) -> dict[str, Callable[[Path], list[str]]]:
    """``tools`` with 'before' after 'derrick': its command, run by the baseline."""
    ours = tools["derrick"]

    def baseline(d: Path) -> list[str]:
        return [*before, *ours(d)[len(derrick) :]]

    out: dict[str, Callable[[Path], list[str]]] = {}
    for tool, make in tools.items():
        out[tool] = make
        if tool == "derrick":
            out["before"] = baseline
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--layer-mib", type=int, default=256)
    ap.add_argument("--jobs", type=int, default=None, help="derrick --jobs (default: its own)")
    ap.add_argument("--only", choices=["pull", "copy"], default=None)
    ap.add_argument("--startup", action="store_true", help="also run bench_startup.py")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp dir under /var/tmp")
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="SRC",
        help="also time the derrick whose package is in SRC/derrick (e.g. an older version's "
        "src directory from git archive), as the tool 'before', in the same turns",
    )
    args = ap.parse_args()
    for tool in (GNU_TIME, "skopeo", "curl"):
        if shutil.which(tool) is None and not Path(tool).exists():
            raise SystemExit(f"{tool} is needed (apt-get install time skopeo curl)")

    compile_derrick()
    if args.baseline is not None:
        compile_derrick(args.baseline.resolve())
    load_before = load()
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
        blobs, manifest_digest, manifest_type = blob_digests(image, "big")
        manifest_file = image.path / "blobs" / "sha256" / manifest_digest[7:]
        src = start_registry(work / "reg-src", name="src")
        regs.append(src)
        push_with_skopeo(image, "big", src, "bench/big")
        src_ref = f"{src.host}/bench/big:big"

        jobs = ["--jobs", str(args.jobs)] if args.jobs else []
        derrick = derrick_command()
        before = (
            ["env", f"PYTHONPATH={args.baseline.resolve()}", *derrick] if args.baseline else None
        )
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

        def fresh_destination(label: str) -> RegistryProcess:
            """An empty registry, so no run can mount or skip what an earlier one pushed."""
            reg = start_registry(work / f"reg-{label}", name=label)
            regs.append(reg)
            return reg

        sk = ["skopeo", "--insecure-policy", "--tmpdir", str(home / "tmp")]
        from_src = [*sk, "copy", "-q", "--src-tls-verify=false"]
        pulls: dict[str, dict[str, Callable[[Path], list[str]]]] = {
            "pull to OCI layout": {
                "derrick": lambda d: [
                    *derrick,
                    "image",
                    "pull",
                    "-q",
                    *jobs,
                    src_ref,
                    "-o",
                    f"{d}/oci",
                ],
                "skopeo": lambda d: [*from_src, f"docker://{src_ref}", f"oci:{d}/oci:big"],
                "curl": lambda d: curl_pull_script(src.url, "bench/big", blobs, d / "files"),
            },
            "pull to docker-archive": {
                "derrick": lambda d: [
                    *derrick,
                    "image",
                    "pull",
                    "-q",
                    *jobs,
                    src_ref,
                    "-o",
                    f"{d}/i.tar",
                ],
                "skopeo": lambda d: [
                    *from_src,
                    f"docker://{src_ref}",
                    f"docker-archive:{d}/i.tar:bench/big:big",
                ],
            },
        }

        if before is not None:
            for name, tools in pulls.items():
                pulls[name] = _with_before(tools, derrick, before)

        def copies(n: int) -> dict[str, Callable[[Path], list[str]]]:
            def to(label: str) -> RegistryProcess:
                return fresh_destination(f"{label}{n}")

            def copy_with(cmd: list[str], label: str) -> Callable[[Path], list[str]]:
                return lambda d: [
                    *cmd,
                    "image",
                    "copy",
                    "-q",
                    *jobs,
                    src_ref,
                    f"{to(label).host}/bench/big:big",
                ]

            return {
                "derrick": copy_with(derrick, "d"),
                **({"before": copy_with(before, "b")} if before is not None else {}),
                "skopeo": lambda d: [
                    *from_src,
                    "--dest-tls-verify=false",
                    f"docker://{src_ref}",
                    f"docker://{to('s').host}/bench/big:big",
                ],
                "curl": lambda d: curl_copy_script(
                    src.url,
                    "bench/big",
                    to("c").url,
                    "bench/big",
                    blobs,
                    manifest_file,
                    manifest_type,
                ),
            }

        # Pulls first, then copies: the copies leave gigabytes for the kernel to write back,
        # which would slow whichever pull came next.
        phases = [p for p in ("pull", "copy") if args.only in (None, p)]
        for phase in phases:
            for run in range(args.runs):
                print(f"{phase} run {run + 1}/{args.runs} ...", file=sys.stderr)
                groups = pulls if phase == "pull" else {"copy registry to registry": copies(run)}
                for name, tools in groups.items():
                    order = list(tools) if run % 2 == 0 else list(reversed(tools))
                    for tool in order:
                        measure(name, tool, tools[tool])
                for reg in regs[1:]:
                    reg.stop()
                del regs[1:]

        print()
        print(
            f"image: {args.layers} layers, {total / MiB:.0f} MiB; runs: {args.runs}; "
            f"cores: {os.cpu_count()}; load average before {load_before}, after {load()}"
        )
        header = (
            f"{'case':26} {'tool':8} {'median s':>9} {'min-max s':>11} {'MB/s':>6} "
            f"{'RSS MiB':>8} {'÷skopeo':>8} {'÷limit':>7} {'CPU s':>6} {'min-max CPU':>11}"
        )
        print(header)
        print("-" * len(header))
        for name, tools in cases.items():
            sko, lim = tools.get("skopeo"), tools.get("curl")
            for tool, case in tools.items():
                ours = tool in ("derrick", "before")
                r_sk = f"{case.median / sko.median:.2f}" if sko and ours else ""
                r_lim = f"{case.median / lim.median:.2f}" if lim and ours else ""
                print(
                    f"{name:26} {tool:8} {case.median:9.2f} {case.spread:>11} "
                    f"{total / case.median / 1e6:6.0f} {case.peak_rss_mib:8.1f} "
                    f"{r_sk:>8} {r_lim:>7} {case.cpu_median:6.2f} {case.cpu_spread:>11}"
                )
        print()
        print("each run, in order: wall s / user s + system s")
        for name, tools in cases.items():
            for tool, case in tools.items():
                runs = " ".join(
                    f"{x.seconds:.2f}/{x.user_seconds:.2f}+{x.system_seconds:.2f}"
                    for x in case.samples
                )
                print(f"{name:26} {tool:8} {runs}")
    finally:
        for r in regs:
            r.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.startup:
        print()
        subprocess.run(
            [sys.executable, str(Path(__file__).parent / "bench_startup.py")], check=False
        )


if __name__ == "__main__":
    main()
