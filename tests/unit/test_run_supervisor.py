"""`painpath run`'s supervisor: a service that dies at start is reported with its log's end."""

import subprocess
import sys
from pathlib import Path

import pytest

import painpath.run as run
from painpath.run import Service, run_services


def test_a_service_that_exits_at_start_is_reported_with_the_end_of_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    service = Service(name="gateway", args=[], ready_url="http://127.0.0.1:9/readyz")

    def start(service: Service, log_dir: Path) -> None:
        """A "service" that writes one log line and exits 3."""
        log = (log_dir / f"{service.name}.log").open("ab")
        code = 'import sys; print(\'{"event": "address already in use"}\'); sys.exit(3)'
        service.process = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=log)

    monkeypatch.setattr(run, "_start", start)
    said: list[str] = []
    with pytest.raises(RuntimeError) as error:
        run_services([service], said.append, tmp_path)
    message = str(error.value)
    assert "gateway exited at start (3)" in message
    assert "address already in use" in message
    assert said == ["stopped"]
