"""The local stack's state file: every service reads it while others may be rewriting it."""

import os
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

from shared.stack import LocalStack, StackState


def test_a_reader_never_sees_the_state_file_half_written(tmp_path: Path):
    stack = LocalStack(tmp_path)
    tmp_path.mkdir(exist_ok=True)
    state = StackState(
        bootstrap_servers="127.0.0.1:19092",
        database_url="postgresql://painpath@127.0.0.1/painpath",
        broker_pid=1,
        api_key="k" * 32,
        pseudonym_key="p" * 64,
        admin_token="t" * 32,
    )
    stack._record(state)
    stop = threading.Event()
    failures: list[Exception] = []

    def write() -> None:
        while not stop.is_set():
            stack._record(state)

    writers = [threading.Thread(target=write) for _ in range(3)]
    for writer in writers:
        writer.start()
    try:
        for _ in range(3000):
            try:
                assert stack._recorded() == state
            except Exception as error:  # noqa: BLE001 - any failure to read is the finding
                failures.append(error)
    finally:
        stop.set()
        for writer in writers:
            writer.join()
    assert failures == []
    assert [p.name for p in tmp_path.iterdir()] == ["stack.json"]  # no temporary left behind


def test_a_state_file_of_an_earlier_version_loads_and_its_database_counts_as_stale(
    tmp_path: Path,
):
    """Before issue 13 the file had no broker ids: its database describes an unknown broker."""
    (tmp_path / "stack.json").write_text(
        '{"bootstrap_servers": "127.0.0.1:1", "database_url": "postgresql://x", "broker_pid": 1,'
        ' "api_key": "k", "pseudonym_key": "p", "admin_token": "t", "a_later_field": 1}'
    )
    state = LocalStack(tmp_path)._recorded()
    assert state.services == {} and state.run_pid == 0
    assert not state.broker_lost  # both ids unknown ("" == ""): nothing to replay
    assert replace(state, broker_id="b2").broker_lost


def test_update_changes_only_the_fields_given_and_service_urls_need_a_live_run(tmp_path: Path):
    stack = LocalStack(tmp_path)
    stack._record(
        StackState("127.0.0.1:1", "postgresql://x", 1, "k", "p", "t", broker_id="b", owner_pid=7)
    )
    state = stack.update(
        run_pid=os.getpid(), services={"gateway": {"url": "http://127.0.0.1:5", "pid": 1}}
    )
    assert (state.broker_id, state.owner_pid) == ("b", 7)
    assert stack._recorded().service_url("gateway") == "http://127.0.0.1:5"
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert replace(state, run_pid=gone.pid).service_url("gateway") is None
