"""The benchmark's pure parts: percentiles, rates, targets, profiles, the table and the plot."""

from __future__ import annotations

import json

import pytest

from bench.measure import (
    FIGURES,
    TARGETS,
    bytes_per_event,
    check_targets,
    comparison_rows,
    figure_text,
    idle_until,
    metric_value,
    per_million,
    percentile,
    projected_1m,
    rate,
    ratio,
    summarize_latencies,
    top_frames,
    windowed_rates,
)
from bench.run import (
    PHASES,
    RESULTS,
    broker_memory_needed,
    figures_of,
    main,
    measurement_errors,
    parse_args,
    previous_results,
    print_table,
)
from bench.services import relabel

# Issue 12's figures, each under its name in the results file's `figures`.
ISSUE_12 = (
    "classifier_one_worker_of_ceiling",
    "two_workers_speedup",
    "pipeline_1m_seconds",
    "classifier_restart_ready_s",
    "classifier_takeover_s_per_1m",
    "e2e_p99_ms",
    "e2e_task_p99_ms",
    "e2e_p99_during_backfill_ms",
    "classifier_rss_bytes_per_event",
)


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
        "pipeline_1m_seconds": 180.0,  # "under 3 minutes": 180 is not
        "classifier_rss_bytes_per_event": 1023.0,
        "classifier_one_worker_of_ceiling": 0.4,
        "backfill_1m_two_workers_s": None,
    }
    checked = {target["key"]: target["met"] for target in check_targets(figures)}
    assert checked == {
        "classifier_one_worker_eps": True,
        "two_workers_speedup": False,
        "e2e_p99_ms": True,
        "pipeline_1m_seconds": False,
        "classifier_rss_bytes_per_event": True,
        "classifier_one_worker_of_ceiling": True,
        "backfill_1m_two_workers_s": None,
        "classifier_restart_ready_s": None,
        "classifier_takeover_s_per_1m": None,
        "e2e_task_p99_ms": None,
        "e2e_p99_during_backfill_ms": None,
    }
    assert {target.key for target in TARGETS if target.issue == 12} == set(ISSUE_12)
    assert set(ISSUE_12) <= set(FIGURES)  # each one has a row in the table


def test_figure_values_as_the_table_writes_them():
    assert figure_text(0.2134, "×") == "0.213 ×"
    assert figure_text(23.27, "s") == "23.3 s"
    assert figure_text(25_604.4, "events/s") == "25,604 events/s"
    assert figure_text(0, "") == "0"
    assert figure_text(None, "ms") == "n/a"


def test_a_metric_is_summed_over_the_samples_with_the_labels_asked_for():
    text = "\n".join(
        [
            "# HELP painpath_classifier_events_total Input records, by outcome",
            'painpath_classifier_events_total{outcome="new"} 2792.0',
            'painpath_classifier_events_total{outcome="duplicate"} 40.0',
            'painpath_classifier_events_total{outcome="dead_letter"} 36.0',
            'painpath_classifier_events_created{outcome="new"} 1.7e+09',
            "painpath_classifier_restore_seconds_sum 0.25",
        ]
    )
    name = "painpath_classifier_events_total"
    assert metric_value(text, name, {"outcome": "new"}) == 2792
    assert metric_value(text, name) == 2868
    assert metric_value(text, name, {"outcome": "other"}) == 0
    assert metric_value(text, "painpath_classifier_restore_seconds_sum") == 0.25


def test_a_million_events_projected_from_a_smaller_run_keeps_its_start_up():
    assert projected_1m(14.0, 4.0, 100_000) == (104.0, True)  # 4 + 10 x 10
    assert projected_1m(95.0, 4.0, 1_006_955) == (95.0, False)  # measured, not projected
    assert projected_1m(10.0, 12.0, 500_000) == (10.0, True)  # start-up is at most the whole
    assert projected_1m(0.0, 0.0, 1000) == (None, False)
    assert per_million(3.9, 100_000) == 39.0
    assert per_million(None, 100_000) is None and per_million(3.9, 0) is None


def test_rss_per_event_is_the_growth_over_the_state_less_worker():
    assert bytes_per_event(77 * 10**6, 67 * 10**6, 10_000) == 1000.0
    assert bytes_per_event(None, 67 * 10**6, 10_000) is None
    assert bytes_per_event(77 * 10**6, None, 10_000) is None
    assert bytes_per_event(77 * 10**6, 67 * 10**6, 0) is None


def test_a_relabelled_feed_shares_no_patient_and_no_event(tmp_path):
    from bench.run import feed_lines

    lines = feed_lines(200, 1, tmp_path)
    again = relabel(lines, "bf-")
    assert len(again) == len(lines)
    ids = {"patients": set(), "events": set(), "retracted": set()}
    for before, after in zip(lines, again, strict=True):
        try:
            old, new = json.loads(before), json.loads(after)
        except ValueError:
            continue  # the feed's truncated lines stay truncated
        assert new["id"] == "bf-" + old["id"]
        assert new["data"]["patient_id"] == "bf-" + old["data"]["patient_id"]
        assert {k: v for k, v in new.items() if k not in ("id", "data")} == {
            k: v for k, v in old.items() if k not in ("id", "data")
        }
        ids["patients"].add(new["data"]["patient_id"])
        ids["events"].add(new["id"])
        if "retracted_id" in new["data"]:
            assert new["data"]["retracted_id"] == "bf-" + old["data"]["retracted_id"]
            ids["retracted"].add(new["data"]["retracted_id"])
    assert all(patient.startswith("bf-sim-") for patient in ids["patients"])
    assert ids["retracted"] and all(event.startswith("bf-") for event in ids["retracted"])


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
            "restart": {"seconds_to_ready": 4.5, "restore_seconds": 0.2},
            "takeover": {"seconds_to_ready": 4.0, "seconds_to_ready_per_1m": 2000.0},
            "memory": {"bytes_per_event": 3000.0},
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
        "pipeline": {
            "events": 2000,
            "seconds_1m": 2500.0,
            "projected": True,
            "lag_columns": [
                "seconds",
                "classified",
                "classifier",
                "coordinator",
                "timeline",
                "outbox",
            ],
            "lag_samples": [
                [1, 0, 2000, 0, 2000, 0],
                [2, 2000, 0, 30, 1000, 4],
                [3, 2000, 0, 0, 0, 0],
            ],
        },
        "latency": {
            "target_eps": 200,
            "event_to_determination": {"p50_ms": 500.0, "p95_ms": 700.0, "p99_ms": 800.0},
            "request_to_first_task_change": {"p99_ms": 900.0},
            "latency_samples_ms": [100.0, 500.0, 800.0],
            "task_samples_ms": [300.0, 900.0],
            "during_backfill": {
                "event_to_determination": {"p50_ms": 600.0, "p99_ms": 1200.0},
                "latency_samples_ms": [150.0, 600.0, 1200.0],
            },
        },
        "peak_rss_bytes": {"broker (tansu)": 150 * 2**20, "classifier_1 classifier-1": None},
    }
    result["figures"] = figures_of(result)
    result["targets"] = check_targets(result["figures"])
    return result


def test_figures_ratios_and_targets_of_a_result():
    figures = fake_result()["figures"]
    assert {name: figures[name] for name in ISSUE_12} == {
        "classifier_one_worker_of_ceiling": 0.025,
        "two_workers_speedup": 1.5,
        "pipeline_1m_seconds": 2500.0,
        "classifier_restart_ready_s": 4.5,
        "classifier_takeover_s_per_1m": 2000.0,
        "e2e_p99_ms": 800.0,
        "e2e_task_p99_ms": 900.0,
        "e2e_p99_during_backfill_ms": 1200.0,
        "classifier_rss_bytes_per_event": 3000.0,
    }
    assert set(figures_of({}).values()) == {None}  # every phase may fail
    assert set(figures_of({})) == set(FIGURES)


def test_what_a_phase_measured_only_in_part_is_an_error():
    result = {
        "classifier_1": {"memory": {"errors": ["classifier_rss_bytes_per_event: not measured"]}},
        "latency": {"during_backfill": {"errors": ["latency during a backfill: boom"]}},
    }
    assert measurement_errors(result) == [
        "classifier_rss_bytes_per_event: not measured",
        "latency during a backfill: boom",
    ]
    assert measurement_errors({}) == []


def test_the_previous_results_file_is_the_newest_other_one(tmp_path):
    assert previous_results(tmp_path, "20260103T000000Z") is None
    for stamp, figures in (
        ("20260101T000000Z", {"e2e_p99_ms": 90.0}),
        ("20260102T000000Z", {"e2e_p99_ms": 80.0}),
        ("20260103T000000Z", {"e2e_p99_ms": 70.0}),  # this run's own
    ):
        (tmp_path / f"{stamp}.json").write_text(json.dumps({"figures": figures}))
    (tmp_path / "20260102T120000Z.json").write_text("not json")  # skipped
    assert previous_results(tmp_path, "20260103T000000Z") == (
        "20260102T000000Z",
        {"e2e_p99_ms": 80.0},
    )


def test_a_partial_run_is_kept_apart_and_compared_with_the_last_full_run(tmp_path):
    full = {"parameters": {"phases": list(PHASES)}, "figures": {"e2e_p99_ms": 80.0}}
    partial = {"parameters": {"phases": ["latency"]}, "figures": {"e2e_p99_ms": 70.0}}
    (tmp_path / "20260101T000000Z.json").write_text(json.dumps(full))
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "20260102T000000Z.json").write_text(json.dumps(partial))
    (tmp_path / "20260102T000000Z.json").write_text(json.dumps(partial))  # misplaced: skipped
    expected = ("20260101T000000Z", {"e2e_p99_ms": 80.0})
    assert previous_results(tmp_path / "partial", "20260103T000000Z") == expected
    assert previous_results(tmp_path, "20260103T000000Z") == expected
    args = parse_args(["--phases", "latency", "classifier"])
    assert args.phases == ["classifier", "latency"] and args.results_dir.name == "partial"
    assert parse_args([]).results_dir == RESULTS and parse_args([]).phases == list(PHASES)


def test_each_figure_is_shown_beside_the_previous_files():
    figures = {"two_workers_speedup": 1.9, "pipeline_1m_seconds": 150.0}
    targets = check_targets(figures)
    rows = {
        row[0]: row[1:] for row in comparison_rows(figures, targets, {"two_workers_speedup": 2.0})
    }
    assert rows[FIGURES["two_workers_speedup"][0]] == ("1.9 ×", "≥ 1.7 ×", "met", "2 ×")
    assert rows[FIGURES["pipeline_1m_seconds"][0]] == ("150.0 s", "< 180 s", "met", "absent")
    assert rows[FIGURES["e2e_p99_ms"][0]] == ("n/a", "< 250 ms", "n/a", "absent")
    assert rows[FIGURES["gateway_eps"][0]] == ("n/a", "", "", "absent")
    without = comparison_rows(figures, targets, None)
    assert {row[4] for row in without} == {""}
    assert len(without) == len(FIGURES)


def test_the_table_prints_every_figure_and_the_targets(capsys):
    from rich.console import Console

    result = fake_result()
    result["previous"] = {"timestamp": "20251231T000000Z", "figures": {"e2e_p99_ms": 94.0}}
    print_table(result, Console(width=250, force_terminal=False))
    out = capsys.readouterr().out
    assert "classifier, one worker" in out and "NOT met" in out and "≥ 20,000 events/s" in out
    assert "broker (tansu)" in out and "150 MiB" in out
    assert "previous (20251231T000000Z)" in out and "94 ms" in out and "absent" in out
    assert "whole pipeline (projected)" in out


def test_the_plot_is_a_png(tmp_path):
    from bench.plot import plot

    plot(fake_result(), tmp_path / "out.png")
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot({"figures": {}}, tmp_path / "empty.png")  # a run whose phases all failed still plots
    plot({"figures": {}, "targets": check_targets({})}, tmp_path / "none-measured.png")
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
