"""`painpath run`: the services as separate processes, watched until Ctrl-C, then stopped cleanly.

The local stack is started (or reused), the topics created and the database migrated first;
then the gateway and the classifier workers start, each its own `painpath` process with its own
port. If one exits unexpectedly, everything is stopped and the exit is reported.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

STOP_TIMEOUT = 20.0


@dataclass
class Service:
    name: str
    args: list[str]
    ready_url: str
    process: subprocess.Popen | None = None


def _start(service: Service, log_dir: Path) -> None:
    log = (log_dir / f"{service.name}.log").open("ab")
    service.process = subprocess.Popen(
        [sys.executable, "-m", "painpath", *service.args],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
    )


def _log_tail(log: Path, lines: int = 15) -> str:
    """The last lines of a service's log (privacy-filtered JSON: safe to show)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _wait_ready(services: list[Service], log_dir: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    for service in services:
        while True:
            if service.process.poll() is not None:
                log = log_dir / f"{service.name}.log"
                raise RuntimeError(
                    f"{service.name} exited at start ({service.process.returncode}); "
                    f"the end of {log}:\n{_log_tail(log)}"
                )
            try:
                if httpx.get(service.ready_url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{service.name} was not ready after {timeout:.0f} s")
            time.sleep(0.2)


def _stop(services: list[Service]) -> None:
    for service in reversed(services):
        if service.process and service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for service in services:
        if service.process is None:
            continue
        try:
            service.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait()


def run_services(services: list[Service], echo, log_dir: Path, when_ready=None) -> int:
    """Start, wait until ready, run `when_ready`, watch; returns the exit status.

    Each service logs to `log_dir/<name>.log`. Ctrl-C at any point stops every service started
    (during `when_ready` as a KeyboardInterrupt).
    """
    stopping = False

    def request_stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        for service in services:
            _start(service, log_dir)
        _wait_ready(services, log_dir)
        echo(f"logs   {log_dir}/<service>.log")
        for service in services:
            echo(f"ready  {service.name:<14} {service.ready_url}")
        if when_ready is not None:
            when_ready()
        for sig in previous:
            signal.signal(sig, request_stop)
        echo("running: Ctrl-C stops every service")
        while not stopping:
            for service in services:
                if service.process.poll() is not None:
                    echo(f"{service.name} exited ({service.process.returncode}): stopping the rest")
                    return 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        _stop(services)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        echo("stopped")
