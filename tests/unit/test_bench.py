"""The benchmark's pure parts: percentiles, rates, targets, profiles, the table and the plot."""

from __future__ import annotations

import pytest

from bench.measure import (
    TARGETS,
    check_targets,
    idle_until,
    percentile,
    rate,
    ratio,
    summarize_latencies,
    top_frames,
    windowed_rates,
)
from bench.run import broker_memory_needed, figures_of, main, parse_args, print_table


def test_percentiles_interpolate_between_closest_ranks():
    values = [float(n) for n in range(1, 101)]  # 1 .. 100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1 and percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_latency_summary_is_in_milliseconds():
    summary = summarize_latencies([0.1, 0.2, 0.3])
    assert summary == {
        "count": 3,
        "p50_ms": 200.0,
        "p95_ms": 290.0,
        "p99_ms": 298.0,
        "max_ms": 300.0,
    }
    assert summarize_latencies([])["p99_ms"] is None


def test_rates_and_ratios_refuse_to_divide_by_nothing():
    assert rate(1000, 4.0) == 250.0
    assert rate(1000, 0) is None
    assert ratio(1.7, 1.0) == 1.7
    assert ratio(None, 2.0) is None and ratio(3.0, None) is None and ratio(3.0, 0) is None


def test_work_began_after_the_last_idle_sample():
    assert idle_until([(0.5, 0), (1.0, 0), (1.5, 300), (2.0, 900)]) == 1.0
    assert idle_until([(0.5, 10), (1.0, 20)]) == 0.0
    assert idle_until([]) == 0.0


def test_windowed_rates_of_a_cumulative_series():
    samples = [(0.0, 0), (2.5, 100), (5.0, 500), (7.5, 600), (10.0, 1500)]
    assert windowed_rates(samples, window=5.0) == [100.0, 200.0]


def test_targets_are_the_issues_and_missing_figures_are_not_met_or_failed():
    figures = {
        "classifier_one_worker_eps": 25_000.0,
        "two_workers_speedup": 1.5,
        "e2e_p99_ms": 249.0,
        "backfill_1m_two_workers_s": None,
    }
    checked = {target["key"]: target["met"] for target in check_targets(figures)}
    assert checked == {
        "classifier_one_worker_eps": True,
        "two_workers_speedup": False,
        "e2e_p99_ms": True,
        "backfill_1m_two_workers_s": None,
    }
    assert {target.key for target in TARGETS} == set(checked)


def test_top_frames_of_a_py_spy_raw_profile():
    lines = [
        "main (painpath/__main__.py:3);handle (services/classifier/stream.py:170);"
        "evaluate (services/classifier/rules.py:39) 30\n",
        "main (painpath/__main__.py:3);handle (services/classifier/stream.py:170);"
        "loads (json/__init__.py:346) 10\n",
        "select (selectors.py:468) 60\n",
        "garbage line\n",
    ]
    top = top_frames(lines)
    assert top["samples"] == 100
    assert top["own_percent"][0] == ["select (selectors.py:468)", 60.0]
    assert ["evaluate (services/classifier/rules.py:39)", 30.0] in top["own_percent"]
    project = dict(top["inclusive_percent_project"])
    assert project == {
        "handle (services/classifier/stream.py:170)": 40.0,
        "evaluate (services/classifier/rules.py:39)": 30.0,
    }


def fake_result() -> dict:
    result = {
        "timestamp": "20260101T000000Z",
        "backfill_events": 2000,
        "machine": {"cores": 2},
        "errors": [],
        "ceiling": {"json_loads": {"eps": 80_000.0}, "parse_event": {"eps": 40_000.0}},
        "classifier_1": {
            "eps": 1000.0,
            "projected_1m_seconds": 1000.0,
            "throughput_samples": [[0, 0], [1, 1000]],
            "check": {"mismatches": 0},
        },
        "classifier_2": {
            "eps": 1500.0,
            "projected_1m_seconds": 666.7,
            "throughput_samples": [[0, 0], [1, 1500]],
            "check": {"mismatches": 0},
        },
        "gateway": {"eps": 9000.0},
        "latency": {
            "target_eps": 200,
            "event_to_determination": {"p50_ms": 500.0, "p95_ms": 700.0, "p99_ms": 800.0},
            "request_to_first_task_change": {"p99_ms": 900.0},
            "latency_samples_ms": [100.0, 500.0, 800.0],
            "task_samples_ms": [300.0, 900.0],
        },
        "peak_rss_bytes": {"broker (tansu)": 150 * 2**20, "classifier_1 classifier-1": None},
    }
    result["figures"] = figures_of(result)
    result["targets"] = check_targets(result["figures"])
    return result


def test_figures_ratios_and_targets_of_a_result():
    figures = fake_result()["figures"]
    assert figures["two_workers_speedup"] == 1.5
    assert figures["classifier_one_worker_of_ceiling"] == 0.025
    assert figures["e2e_p99_ms"] == 800.0
    assert figures_of({})["classifier_one_worker_eps"] is None  # every phase may fail


def test_the_table_prints_every_figure_and_the_targets(capsys):
    from rich.console import Console

    print_table(fake_result(), Console(width=200, force_terminal=False))
    out = capsys.readouterr().out
    assert "classifier, one worker" in out and "NOT met" in out and "≥ 20,000 events/s" in out
    assert "broker (tansu)" in out and "150 MiB" in out


def test_the_plot_is_a_png(tmp_path):
    from bench.plot import plot

    plot(fake_result(), tmp_path / "out.png")
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot({"figures": {}}, tmp_path / "empty.png")  # a run whose phases all failed still plots
    assert (tmp_path / "empty.png").exists()


def test_options_default_to_the_issue():
    args = parse_args([])
    assert args.events == 1_000_000 and args.gateway_events == 100_000
    assert args.latency_rate == 200 and args.latency_seconds >= 60 and args.gateway_batch == 500
    assert parse_args(["--events", "3000"]).gateway_events == 3000


def test_a_backfill_the_in_memory_broker_cannot_hold_is_refused(capsys):
    assert broker_memory_needed(1_000_000) < 8 * 2**30  # the default backfill fits
    assert main(["--events", "100000000000"]) == 2
    assert "refusing" in capsys.readouterr().err
