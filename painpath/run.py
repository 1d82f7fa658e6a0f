"""`painpath run`'s supervisor: the services as separate processes, kept running until Ctrl-C.

Each service is its own `painpath` process with its own port and log. One that exits is started
again after a backoff (1 s doubling to 30 s), and the console says so; everything is stopped
only on Ctrl-C (or SIGTERM, or the terminal closing: SIGHUP), or when a service keeps failing
(`MAX_FAILURES` exits within `FAILURE_WINDOW` seconds, or `MAX_START_FAILURES` exits before it
was ever ready). No service outlives the run: each is started with a parent-death signal
(Linux `PR_SET_PDEATHSIG`: SIGTERM when the run dies, even by SIGKILL) in a session of its own
(so a Ctrl-C reaches the run only, which stops the services in order).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

STOP_TIMEOUT = 20.0
START_TIMEOUT = 90.0
MAX_FAILURES = 5  # exits of one service within FAILURE_WINDOW seconds: the run gives up
FAILURE_WINDOW = 300.0
MAX_START_FAILURES = 3  # exits before the service was ever ready: a configuration error
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
PR_SET_PDEATHSIG = 1

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (OSError, AttributeError):  # no libc prctl: the process group stop still applies
    _prctl = None


def die_with_parent(parent: int) -> Callable[[], None]:
    """A `preexec_fn`: the child gets SIGTERM when `parent` dies (even SIGKILLed), and ends at
    once if the parent died before this ran. Resolved before the fork: the child only calls."""

    def preexec() -> None:
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


@dataclass
class Service:
    name: str
    args: list[str]
    ready_url: str
    process: subprocess.Popen | None = None
    ready: bool = False  # answered 200 on ready_url since it was (re)started
    ever_ready: bool = False
    exits: list[float] = field(default_factory=list)  # monotonic times of unexpected exits
    restart_at: float | None = None  # when a restart is due
    exited_at: float | None = None
    started_at: float = 0.0
    # Started only once this is set (e.g. the classifier workers after a replay's publish)
    held_until: threading.Event | None = None

    @property
    def held(self) -> bool:
        return self.process is None and self.held_until is not None


class GaveUp(RuntimeError):
    """A service kept failing: the run stops."""


def _start(service: Service, log_dir: Path) -> None:
    log = (log_dir / f"{service.name}.log").open("ab")
    service.process = subprocess.Popen(
        [sys.executable, "-m", "painpath", *service.args],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        preexec_fn=die_with_parent(os.getpid()),
    )
    log.close()


def _log_tail(log: Path, lines: int = 15) -> str:
    """The last lines of a service's log (privacy-filtered JSON: safe to show)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _answers_ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on a local TCP `port` (Linux /proc; empty elsewhere)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN; the inode is the 10th field
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def listened_by(pid: int, port: int) -> bool:
    """Whether process `pid` holds the socket listening on `port`. True where /proc cannot
    tell (not Linux): the port was checked free before the service started."""
    if not Path("/proc/net/tcp").exists():
        return True
    inodes = listening_inodes(port)
    try:
        links = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
    except OSError:
        return False
    return any(f"socket:[{inode}]" in links for inode in inodes)


def is_ready(service: Service) -> bool:
    """Ready, and answered by the service this run started, not by another program that took
    its port (a run only ever talks to the services it started)."""
    port = httpx.URL(service.ready_url).port
    return _answers_ready(service.ready_url) and (
        port is None or listened_by(service.process.pid, port)
    )


def backoff(failures: int) -> float:
    """Seconds before restarting a service that exited `failures` times in the window."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, failures - 1))


class Supervisor:
    """Starts the services, restarts one that exits, and stops them all in reverse order."""

    def __init__(
        self,
        services: list[Service],
        echo: Callable[[str], None],
        log_dir: Path,
        on_change: Callable[[list[Service]], None] | None = None,
        start: Callable[[Service, Path], None] | None = None,
    ):
        self.services = services
        self.echo = echo
        self.log_dir = log_dir
        self.on_change = on_change or (lambda services: None)
        self._start_process = start or _start
        self.restarts = 0

    def start_all(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for service in self.services:
            if not service.held:
                self._launch(service)
        self.on_change(self._started())

    def _launch(self, service: Service) -> None:
        self._start_process(service, self.log_dir)
        service.ready = False
        service.restart_at = None
        service.started_at = time.monotonic()

    def all_ready(self) -> bool:
        """Every service started so far is ready (a held one counts once it is started)."""
        return all(service.ready for service in self.services if not service.held)

    def _started(self) -> list[Service]:
        return [service for service in self.services if not service.held]

    def tick(self, now: float | None = None) -> None:
        """One look at every service: note exits, restart those due, check readiness."""
        now = time.monotonic() if now is None else now
        for service in self.services:
            if service.held:
                if service.held_until.is_set():
                    self._launch(service)
                    self.echo(f"start  {service.name:<14} (pid {service.process.pid})")
                    self.on_change(self._started())
                continue
            if service.restart_at is not None:
                if now >= service.restart_at:
                    self._launch(service)
                    self.restarts += 1
                    self.echo(f"{service.name} restarted (pid {service.process.pid})")
                    self.on_change(self._started())
                continue
            code = service.process.poll()
            if code is not None:
                self._exited(service, code, now)
            elif not service.ready and is_ready(service):
                service.ready = True
                if service.ever_ready and service.exited_at is not None:
                    self.echo(
                        f"{service.name} ready again, {now - service.exited_at:.1f} s after it"
                        " exited"
                    )
                elif service.held_until is not None and not service.ever_ready:
                    self.echo(f"ready  {service.name:<14} {service.ready_url}")
                service.ever_ready = True

    def _exited(self, service: Service, code: int, now: float) -> None:
        service.exits = [t for t in service.exits if now - t < FAILURE_WINDOW] + [now]
        service.exited_at = now
        service.ready = False
        log = self.log_dir / f"{service.name}.log"
        if not service.ever_ready and len(service.exits) >= MAX_START_FAILURES:
            raise GaveUp(
                f"{service.name} exited at start {len(service.exits)} times (last status"
                f" {code}); the end of {log}:\n{_log_tail(log)}"
            )
        if len(service.exits) >= MAX_FAILURES:
            raise GaveUp(
                f"{service.name} exited {len(service.exits)} times in"
                f" {FAILURE_WINDOW:.0f} s (last status {code}): stopping; the end of {log}:\n"
                f"{_log_tail(log)}"
            )
        delay = backoff(len(service.exits))
        service.restart_at = now + delay
        self.echo(
            f"{service.name} exited ({code}): restarting in {delay:.0f} s"
            f" (exit {len(service.exits)} of {MAX_FAILURES} allowed in {FAILURE_WINDOW:.0f} s;"
            f" log {log})"
        )

    def stop(self) -> None:
        for service in reversed(self.services):
            if service.process and service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for service in reversed(self.services):
            if service.process is None:
                continue
            try:
                service.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()


def run_services(
    services: list[Service],
    echo: Callable[[str], None],
    log_dir: Path,
    when_ready: Callable[[], None] | None = None,
    on_change: Callable[[list[Service]], None] | None = None,
    start: Callable[[Service, Path], None] | None = None,
    tick_seconds: float = 0.25,
) -> int:
    """Start, wait until ready, run `when_ready` (in a thread, while the services are watched
    and restarted), keep watching until stopped; returns the exit status. A service with
    `held_until` starts when that event is set.

    Each service logs to `log_dir/<name>.log`. Ctrl-C, SIGTERM or SIGHUP at any point stops
    every service started, in reverse order. `on_change` is told the services whenever one is
    (re)started (to record their pids).
    """
    stopping: list[int] = []

    def request_stop(signum, frame) -> None:
        stopping.append(signum)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.getsignal(sig) for sig in handled}
    supervisor = Supervisor(services, echo, log_dir, on_change, start)
    status = 0
    try:
        for sig in handled:
            signal.signal(sig, request_stop)
        supervisor.start_all()
        deadline = time.monotonic() + START_TIMEOUT
        while not supervisor.all_ready() and not stopping:
            supervisor.tick()
            if time.monotonic() > deadline:
                late = ", ".join(s.name for s in services if not s.ready)
                raise RuntimeError(f"{late} not ready after {START_TIMEOUT:.0f} s")
            time.sleep(tick_seconds)
        if stopping:
            return 130
        echo(f"logs   {log_dir}/<service>.log")
        for service in services:
            if service.held:
                echo(f"held   {service.name:<14} (starts once the feed is published)")
            else:
                echo(f"ready  {service.name:<14} {service.ready_url}")
        running = "running: Ctrl-C stops every service (a service that exits is restarted)"
        replay = _Background(when_ready) if when_ready is not None else None
        if replay is None:
            echo(running)
        while not stopping:
            supervisor.tick()
            if replay is not None and replay.finished():
                if replay.error is not None:
                    echo(f"the replay failed: {replay.error}")
                replay = None
                echo(running)
            time.sleep(tick_seconds)
        status = 0
    except GaveUp as gave_up:
        echo(str(gave_up))
        status = 1
    finally:
        supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        echo("stopped")
    return status


class _Background:
    """`when_ready` in a daemon thread: the main thread keeps supervising (and gets Ctrl-C)."""

    def __init__(self, function: Callable[[], None]):
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, args=(function,), daemon=True)
        self._thread.start()

    def _run(self, function: Callable[[], None]) -> None:
        try:
            function()
        except Exception as error:  # noqa: BLE001 - reported on the console, the run goes on
            self.error = f"{type(error).__name__}: {error}"

    def finished(self) -> bool:
        return not self._thread.is_alive()
