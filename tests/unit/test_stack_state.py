"""The local stack's state file: every service reads it while others may be rewriting it."""

import threading
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
