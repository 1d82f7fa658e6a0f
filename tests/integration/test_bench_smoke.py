"""`make bench` in miniature: a few thousand events through every phase (no timed assertions:
the figures of a small run on a shared machine mean little; that they are all there does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.measure import FIGURES, TARGETS

pytestmark = pytest.mark.integration


@pytest.mark.timeout(400)
def test_bench_measures_every_figure_and_writes_json_and_png(tmp_path: Path):
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "GATEWAY_API_KEYS")
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--events",
            "3000",
            "--gateway-events",
            "2000",
            "--latency-rate",
            "100",
            "--latency-seconds",
            "6",
            "--profile-seconds",
            "0",
            "--results-dir",
            str(tmp_path),
        ],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=380,
        check=False,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    [result_file] = tmp_path.glob("*.json")
    assert result_file.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    result = json.loads(result_file.read_text())
    assert result["errors"] == []
    assert [name for name in FIGURES if result["figures"].get(name) is None] == []
    assert result["figures"]["determination_mismatches_one_worker"] == 0
    assert result["figures"]["determination_mismatches_two_workers"] == 0
    # every target's figure, issue 12's names among them (tests/unit/test_bench.py pins them)
    assert {target["key"] for target in result["targets"]} == {target.key for target in TARGETS}
    pipeline = result["pipeline"]
    assert pipeline["projected"] and pipeline["lag_samples"][-1][2:] == [0] * 6
    assert pipeline["stored"]["patient_events"] > 0 and pipeline["stored"]["determinations"] > 0
    during = result["latency"]["during_backfill"]
    assert during["backfill_events"] == result["backfill_events"]
    assert during["event_to_determination"]["count"] > 0
    memory = result["classifier_1"]["memory"]
    assert 0 < memory["state_less_rss_bytes"] < memory["peak_rss_bytes"]
    assert memory["events_admitted"] > 0
    rss = result["peak_rss_bytes"]
    assert rss["broker (tansu)"] and rss["gateway gateway"] and rss["latency coordinator"]
    assert rss["classifier_1 classifier-1"] and rss["classifier_2 classifier-2"]
    assert rss["classifier_1 classifier-takeover"] and rss["pipeline coordinator"]
    assert result["latency"]["event_to_determination"]["count"] > 0
    assert "classifier, one worker" in run.stdout
