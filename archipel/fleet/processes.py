"""Child processes that cannot outlive the process that started them.

Test servers left running after a failed or interrupted test run poison the next one
(ports, etcd data, memory). Three layers make sure that does not happen:

* every child is started through ``setpriv --pdeathsig KILL``, so the kernel kills it
  when its parent dies, even by SIGKILL, where no Python cleanup runs;
* every child gets its own process group, so stopping it stops anything it spawned;
* every live child is tracked, and :func:`stop_all` (run at interpreter exit and
  on SIGTERM by the launchers) stops them in reverse start order.

The kernel ties the death signal to the *thread* that forked the child, so children
must be started from a thread that lives as long as they should: the main thread.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_live: list[ManagedProcess] = []
_live_lock = threading.Lock()
_SETPRIV = shutil.which("setpriv")


class ProcessError(RuntimeError):
    """A managed process failed to start or exited when it should be running."""


class ManagedProcess:
    """One long-running program with its output kept in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def start(self) -> None:
        """Start the program, appending to its log (restarts keep earlier output)."""
        if self.running:
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.argv
        if _SETPRIV is not None:
            argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        with self.log_path.open("ab") as log:
            log.write(f"\n==== {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        with _live_lock:
            _live.append(self)

    @property
    def running(self) -> bool:
        """Whether the process exists (a paused process is still running)."""
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode if self._popen is not None else None

    def check_running(self) -> None:
        """Raise with the tail of the log if the process has exited."""
        if self._popen is not None and self._popen.poll() is not None:
            raise ProcessError(
                f"{self.name} exited with code {self._popen.returncode}; "
                f"last log lines from {self.log_path}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): it keeps its sockets but answers nothing.

        Returns once the kernel reports it stopped: signal delivery is asynchronous.
        """
        self._signal_group(signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while self.pid is not None and process_state(self.pid) not in ("T", "t", "?"):
            if time.monotonic() > deadline:
                raise ProcessError(f"{self.name} did not stop after SIGSTOP")
            time.sleep(0.01)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; waits until the process is gone."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            # A paused process cannot act on SIGTERM until it is continued.
            self._signal_group(signal.SIGTERM)
            self._signal_group(signal.SIGCONT)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                popen.wait()
        # Anything the program spawned into its group goes with it.
        self._signal_group(signal.SIGKILL)
        with _live_lock:
            if self in _live:
                _live.remove(self)

    def kill(self) -> None:
        """SIGKILL at once, as a crash or an OOM kill would."""
        popen = self._popen
        if popen is None:
            return
        self._signal_group(signal.SIGKILL)
        popen.wait()
        with _live_lock:
            if self in _live:
                _live.remove(self)


def process_state(pid: int) -> str:
    """The process state letter from /proc (R, S, T, Z, ...), or '?' if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    # The state follows the parenthesised command name, which may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int | None) -> bool:
    """Whether the process exists and is not a zombie waiting to be reaped."""
    return pid is not None and process_state(pid) not in ("?", "Z")


def stop_all() -> None:
    """Stop every process this interpreter started and has not stopped yet."""
    with _live_lock:
        processes = list(reversed(_live))
    for process in processes:
        process.stop(timeout=5.0)


atexit.register(stop_all)
