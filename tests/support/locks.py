"""Two derrick processes where the second must wait for the first's ``flock``: started,
checked to be waiting (``/proc/locks``), let go, and both checked to succeed."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from support.faultproxy import FaultProxy


def waits_for_lock(pid: int, path: Path) -> bool:
    """Whether process ``pid`` is blocked waiting for a ``flock`` on the file ``path``."""
    try:
        ino = path.stat().st_ino
    except FileNotFoundError:
        return False
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and "FLOCK" in fields:
            i = fields.index("FLOCK")
            if int(fields[i + 3]) == pid and int(fields[i + 4].rsplit(":", 1)[1]) == ino:
                return True
    return False


def take_turns(
    first: Callable[[], subprocess.Popen[bytes]],
    second: Callable[[], subprocess.Popen[bytes]],
    proxy: FaultProxy,
    lock: Path,
) -> None:
    """Start ``first`` and, once its download stalls at ``proxy``, ``second``; when the
    second waits for the ``flock`` on ``lock``, release the stall; both must exit 0."""
    procs = [first()]
    try:
        proxy.wait_stalled(1)
        procs.append(second())
        deadline = time.monotonic() + 30
        while not waits_for_lock(procs[1].pid, lock):
            assert procs[1].poll() is None, procs[1].communicate()[1].decode()
            assert time.monotonic() < deadline, "the second process never waited for the lock"
            time.sleep(0.02)
        proxy.release()
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err.decode()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
