"""Run the ``derrick`` command on a terminal of its own, as a user at a keyboard does.

:class:`Terminal` starts ``python -m derrick.cli.main ARGV`` in a new session whose
controlling terminal is a fresh pty (stdin, stdout and stderr all on it, ``COLUMNS``
wide), so prompts read from it, ``getpass`` turns its echo off, Ctrl-C typed on it
(:meth:`Terminal.type` of ``"\\x03"``) interrupts the process group and Ctrl-D
(``"\\x04"``) ends its input.  :meth:`Terminal.expect` waits for text on the screen;
:meth:`Terminal.finish` waits for the exit and returns the status and everything shown.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any


def interruptible() -> None:
    """In a child: Ctrl-C interrupts it, as in a login shell.

    A shell script that starts a command in the background (a CI runner may) makes it
    ignore SIGINT, children inherit that, and Python then raises no KeyboardInterrupt.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _take_terminal() -> None:
    """In the child: a new session, with the pty on stdin as its controlling terminal."""
    interruptible()
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    def __init__(
        self,
        *argv: Any,
        columns: int = 160,
        env: Mapping[str, str] | None = None,
    ) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        environ = {**os.environ, "TERM": "xterm", "COLUMNS": str(columns), **(env or {})}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "derrick.cli.main", *(str(a) for a in argv)],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=environ,
                preexec_fn=_take_terminal,
            )
        finally:
            os.close(slave)
        self._master = master
        self.screen = b""

    def _read(self, timeout: float) -> bool:
        """Read what is there within ``timeout``; False once the terminal is closed."""
        ready, _, _ = select.select([self._master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self._master, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            return False
        self.screen += data
        return bool(data)

    def expect(self, text: str, timeout: float = 30) -> None:
        """Wait until ``text`` is on the screen."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.screen:
            if time.monotonic() > deadline or not self._read(0.05):
                raise AssertionError(f"{text!r} did not appear; the screen shows {self.screen!r}")

    def type(self, keys: str) -> None:
        os.write(self._master, keys.encode())

    def interrupt(self) -> None:
        """SIGINT to the process group, as the terminal sends for Ctrl-C (without its echo)."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        """Wait for the exit; the status and the whole screen (``\\r\\n`` as ``\\n``)."""
        deadline = time.monotonic() + timeout
        while self._read(0.05):
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"still running; the screen shows {self.screen!r}")
        code = self.proc.wait(timeout=10)
        return code, self.screen.decode(errors="replace").replace("\r\n", "\n")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self._master)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
