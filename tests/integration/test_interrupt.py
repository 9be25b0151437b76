"""Ctrl-C while a download has stalled: derrick stops at once, not after the read timeout.

The workers of a copy blocked reading a body that stopped coming (or a registry that stopped
taking an upload) are cut short when the copy is cancelled: the interrupt is answered in
well under a second, with the one line of an interrupt, and what a later run resumes from
is kept (the bytes that did arrive, in the cache's partial file).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from derrick.digest import Digest
from derrick.errors import Cancelled
from derrick.images.layout import LayoutDir
from derrick.images.remote import RegistryRepository
from derrick.ops.transfer import copy
from derrick.reference import Reference
from derrick.registry import RegistryClient
from derrick.store.cache import BlobStore
from support.cli import Isolation
from support.faultproxy import Fault, FaultProxy
from support.rawclient import RawClient
from support.registry import RegistryProcess

CUT = 300 * 1024 + 7  # inside each 1 MiB layer of ``medium``
#: How long the stalled copy may take to stop after Ctrl-C.  The read timeout (30 s) is
#: what it took when the interrupt waited for the workers; a shared test machine may be
#: slow to schedule the process, hence not 0.1 s.
PROMPT = 4.0


def _layers(registry: RegistryProcess, medium: str) -> list[str]:
    repo, _, tag = medium.partition("/")[2].rpartition(":")
    with RawClient(registry) as raw:
        return [d["digest"] for d in raw.get_manifest(repo, tag).json()["layers"]]


def _interrupt(
    argv: list[str], proxy: FaultProxy, stalls: int, ready: Callable[[], bool] = lambda: True
) -> tuple[int, str, float]:
    """Run derrick, Ctrl-C it once ``stalls`` downloads stalled (and ``ready`` says what came
    is written); exit code, stderr, seconds taken."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "derrick.cli.main", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    try:
        proxy.wait_stalled(stalls)
        deadline = time.monotonic() + 30
        while not ready():  # a loaded machine may take a while to write what came
            assert time.monotonic() < deadline, "the bytes that came were not written"
            time.sleep(0.05)
        time.sleep(0.3)  # well inside the stalled read
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proxy.release()
    return proc.returncode, err.decode(), took


@pytest.mark.parametrize("kind", ["oci layout", "docker-archive", "registry"])
def test_ctrl_c_stops_a_stalled_copy_at_once(
    kind: str,
    medium: str,
    registry_open: RegistryProcess,
    env: Isolation,
    tmp_path: Path,
    unique_repo: Callable[..., str],
) -> None:
    """Both layers stall: the workers reading them are stopped at once, and the bytes that
    came are kept.  (Before, one worker was waited for until its read timed out.)"""
    layers = _layers(registry_open, medium)
    with FaultProxy(registry_open.url) as proxy:
        for digest in layers:
            proxy.add_fault(Fault(digest=digest, stall_after=CUT, stall_for=None))
        source = f"{proxy.host}/{medium.partition('/')[2]}"
        if kind == "registry":
            argv = ["image", "copy", source, f"{registry_open.host}/{unique_repo()}:v1"]
        elif kind == "oci layout":
            argv = ["image", "pull", source, "-o", str(tmp_path / "out")]
        else:
            argv = ["image", "pull", source, "-o", str(tmp_path / "out.tar")]
        partials = [
            env.cache / "blobs" / "sha256" / f"{digest.split(':')[1]}.partial" for digest in layers
        ]

        def written() -> bool:
            return kind == "registry" or all(
                p.exists() and p.stat().st_size == CUT for p in partials
            )

        code, err, took = _interrupt([*argv, "-q"], proxy, len(layers), written)
    assert code == 130, err
    assert err == "derrick: interrupted\n"
    assert took < PROMPT, f"Ctrl-C took {took:.1f} s"
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out.tar").exists()
    for digest in layers:
        partial = env.cache / "blobs" / "sha256" / f"{digest.split(':')[1]}.partial"
        if kind == "registry":
            assert not partial.exists()  # a copy to a registry keeps nothing locally
        else:
            assert partial.stat().st_size == CUT  # every byte that came is kept to resume


def test_a_cancel_event_set_from_outside_stops_a_stalled_copy_at_once(
    medium: str, registry_open: RegistryProcess, tmp_path: Path
) -> None:
    """The Python API's ``cancel``: set by the caller (not by a failure or an interrupt in
    the copy's own thread), it stops workers blocked in a stalled read too."""
    layers = _layers(registry_open, medium)
    cancel = threading.Event()
    outcome: list[BaseException] = []
    with FaultProxy(registry_open.url) as proxy, RegistryClient(insecure=True) as client:
        for digest in layers:
            proxy.add_fault(Fault(digest=digest, stall_after=CUT, stall_for=None))
        source = RegistryRepository(client, Reference.parse(f"{proxy.host}/disk/medium:v1"))
        store = BlobStore(tmp_path / "cache")

        def run() -> None:
            try:
                copy(source, LayoutDir(tmp_path / "out", store=store), cancel=cancel, cache=store)
            except BaseException as e:
                outcome.append(e)

        worker = threading.Thread(target=run)
        worker.start()
        try:
            proxy.wait_stalled(len(layers))
            time.sleep(0.3)
            start = time.monotonic()
            cancel.set()
            worker.join(60)
            took = time.monotonic() - start
        finally:
            proxy.release()
            worker.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled), outcome
    assert took < PROMPT, f"the cancel took {took:.1f} s"
    assert not (tmp_path / "out").exists()
    for digest in layers:
        assert store.partial_path(Digest.parse(digest)).stat().st_size == CUT
