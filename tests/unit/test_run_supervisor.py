"""`painpath run`'s supervisor: restarts with backoff, gives up on repeated failures, holds a
service until told, and no child outlives the run (parent-death signal)."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import painpath.run as run
from painpath.run import GaveUp, Service, Supervisor, backoff, run_services

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def sleeper(service: Service, log_dir: Path) -> None:
    service.process = subprocess.Popen(SLEEPER, preexec_fn=run.die_with_parent(os.getpid()))


@pytest.fixture
def ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every started service answers ready."""
    monkeypatch.setattr(run, "is_ready", lambda service: True)


def test_a_service_that_keeps_exiting_at_start_is_reported_with_the_end_of_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(run, "BACKOFF_FIRST", 0.01)
    service = Service(name="gateway", args=[], ready_url="http://127.0.0.1:9/readyz")

    def start(service: Service, log_dir: Path) -> None:
        """A "service" that writes one log line and exits 3."""
        log = (log_dir / f"{service.name}.log").open("ab")
        code = 'import sys; print(\'{"event": "address already in use"}\'); sys.exit(3)'
        service.process = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=log)

    said: list[str] = []
    status = run_services([service], said.append, tmp_path, start=start, tick_seconds=0.01)

    assert status == 1
    assert said[0] == "gateway exited (3): restarting in 0 s (exit 1 of 5 allowed in 300 s;" + (
        f" log {tmp_path}/gateway.log)"
    )
    assert "gateway exited at start 3 times (last status 3)" in said[-2]
    assert "address already in use" in said[-2]
    assert said[-1] == "stopped"


def test_backoff_doubles_from_one_second_to_thirty():
    assert [backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_service_that_exits_is_restarted_after_its_backoff_and_reported(tmp_path: Path, ready):
    said: list[str] = []
    started: list[Service] = []
    service = Service("classifier-1", [], "http://127.0.0.1:9/readyz")
    supervisor = Supervisor(
        [service], said.append, tmp_path, on_change=started.extend, start=sleeper
    )
    supervisor.start_all()
    try:
        supervisor.tick(now=100.0)
        first = service.process
        first.kill()
        first.wait()
        supervisor.tick(now=101.0)
        supervisor.tick(now=101.5)  # the backoff (1 s) has not run out
        assert service.process is first
        supervisor.tick(now=102.1)
        supervisor.tick(now=105.0)
    finally:
        supervisor.stop()

    assert service.process is not first
    assert said == [
        "classifier-1 exited (-9): restarting in 1 s (exit 1 of 5 allowed in 300 s;"
        f" log {tmp_path}/classifier-1.log)",
        f"classifier-1 restarted (pid {service.process.pid})",
        "classifier-1 ready again, 4.0 s after it exited",
    ]
    assert supervisor.restarts == 1
    assert len(started) == 2  # told at the start and at the restart (to record the pid)


def test_repeated_failures_within_the_window_stop_the_run(tmp_path: Path, ready):
    service = Service("coordinator", [], "http://127.0.0.1:9/readyz")
    supervisor = Supervisor([service], lambda line: None, tmp_path, start=sleeper)
    supervisor.start_all()
    now = 0.0
    try:
        supervisor.tick(now=now)
        with pytest.raises(GaveUp, match="coordinator exited 5 times in 300 s"):
            for _ in range(5):
                service.process.kill()
                service.process.wait()
                now += 1
                supervisor.tick(now=now)  # the exit
                now += 31
                supervisor.tick(now=now)  # the restart
                supervisor.tick(now=now)  # ready
    finally:
        supervisor.stop()


def test_a_held_service_starts_once_its_event_is_set(tmp_path: Path, ready):
    go = threading.Event()
    said: list[str] = []
    held = Service("classifier-1", [], "http://127.0.0.1:9/readyz", held_until=go)
    other = Service("gateway", [], "http://127.0.0.1:8/readyz")
    supervisor = Supervisor([other, held], said.append, tmp_path, start=sleeper)
    supervisor.start_all()
    try:
        supervisor.tick()
        assert held.process is None and supervisor.all_ready()
        go.set()
        supervisor.tick()
        supervisor.tick()
        assert held.process is not None and held.ready
    finally:
        supervisor.stop()
    assert said == [
        f"start  classifier-1   (pid {held.process.pid})",
        "ready  classifier-1   http://127.0.0.1:9/readyz",
    ]


def test_stop_stops_services_in_reverse_order(tmp_path: Path):
    services = [Service(name, [], "") for name in ("gateway", "coordinator", "classifier-1")]
    supervisor = Supervisor(services, lambda line: None, tmp_path, start=sleeper)
    supervisor.start_all()
    signalled: list[str] = []
    for service in services:
        original = service.process.send_signal

        def send(sig, name=service.name, original=original):
            signalled.append(name)
            original(sig)

        service.process.send_signal = send
    supervisor.stop()
    assert signalled == ["classifier-1", "coordinator", "gateway"]
    assert all(service.process.poll() is not None for service in services)


def test_no_child_outlives_a_sigkilled_parent():
    """The parent-death signal: a run killed with SIGKILL takes its services with it."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time\n"
            "from painpath.run import die_with_parent\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
            " start_new_session=True, preexec_fn=die_with_parent(os.getpid()))\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its SIGKILLed parent")


def test_ready_means_answered_by_the_process_this_run_started(tmp_path: Path):
    """Another program on the service's port answering 200 is not our service being ready."""
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        port = int(server.stdout.readline().split(" port ")[1].split()[0])
        foreign = Service("gateway", [], f"http://127.0.0.1:{port}/")
        sleeper(foreign, tmp_path)  # "our" gateway: a process that listens on nothing
        ours = Service("gateway", [], f"http://127.0.0.1:{port}/", process=server)
        assert run._answers_ready(foreign.ready_url)
        assert not run.is_ready(foreign)
        assert run.is_ready(ours)
    finally:
        server.kill()
        server.wait()
        foreign.process.kill()
        foreign.process.wait()
