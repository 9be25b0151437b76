"""How long the ``derrick`` command takes to start, and to answer a small read.

Starts a local registry (plain http on 127.0.0.1), pushes a small image, then runs each
case ``--runs`` times (default 15), the cases taking turns so that a busy moment of the
machine spreads over all of them, and prints the median and the min-max wall time:

* ``python -c pass``: the floor, an interpreter that imports nothing;
* ``derrick --version`` and ``derrick --help``: no registry, no HTTP;
* ``derrick tag ls REPO`` and ``derrick manifest head REF``: one registry read each
  (with the scheme probe a plain-http loopback registry costs).

The command is the ``derrick`` script next to this Python when there is one, else
``python -m derrick.cli.main``.

Usage:  python benchmarks/bench_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.images import make_single  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402


def derrick_command() -> list[str]:
    script = Path(sys.executable).parent / "derrick"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "derrick.cli.main"]


def compile_derrick() -> None:
    """Write derrick's bytecode once, as installing it does: each run then loads it instead
    of compiling every module it imports (which ``PYTHONDONTWRITEBYTECODE`` would otherwise
    make it do every time)."""
    import compileall

    import derrick

    compileall.compile_dir(Path(derrick.__file__).parent, quiet=1)


def run_once(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{err}")
    return elapsed


def push_image(host: str, work: Path) -> str:
    layout = make_single(work / "layout")
    ref = f"{host}/bench/app:v1"
    argv = ["image", "push", "-q", "--insecure", f"{layout.path}:{layout.tag}", ref]
    run_once([*derrick_command(), *argv], dict(os.environ, HOME=str(work)))
    return ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()

    derrick = derrick_command()
    compile_derrick()
    with tempfile.TemporaryDirectory(prefix="derrick-bench-startup-") as tmp:
        work = Path(tmp)
        reg = start_registry(work / "registry", name="startup")
        try:
            ref = push_image(reg.host, work)
            env = dict(os.environ, HOME=str(work), DOCKER_CONFIG=str(work / "docker"))
            cases = {
                "python -c pass (floor)": [sys.executable, "-c", "pass"],
                "derrick --version": [*derrick, "--version"],
                "derrick --help": [*derrick, "--help"],
                "derrick tag ls": [*derrick, "tag", "ls", ref.rsplit(":", 1)[0]],
                "derrick manifest head": [*derrick, "manifest", "head", ref],
            }
            times: dict[str, list[float]] = {name: [] for name in cases}
            for cmd in cases.values():  # once each first: warm the page cache
                run_once(cmd, env)
            for _ in range(args.runs):
                for name, cmd in cases.items():
                    times[name].append(run_once(cmd, env))
        finally:
            reg.stop()

    print(f"{args.runs} runs each, {' '.join(derrick)}")
    print(f"{'case':<26} {'median':>8} {'min':>8} {'max':>8}")
    for name, xs in times.items():
        ms = [x * 1000 for x in xs]
        print(f"{name:<26} {statistics.median(ms):>6.0f}ms {min(ms):>6.0f}ms {max(ms):>6.0f}ms")


if __name__ == "__main__":
    main()
