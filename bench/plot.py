"""The benchmark's PNG: throughputs against the ceiling, classifier progress, the pipeline's lags,
latency (steady and during a backfill), memory, and issue 12's figures against their targets."""

from __future__ import annotations

from pathlib import Path


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = result.get("figures", {})
    fig, axes = plt.subplots(2, 3, figsize=(19, 9))
    fig.suptitle(
        f"painpath bench {result.get('timestamp', '')}: {result.get('backfill_events', 0):,}"
        f" backfill events, {result.get('machine', {}).get('cores', '?')} cores (shared, noisy)"
    )

    bars = axes[0][0]
    names = [
        ("ceiling\njson.loads", figures.get("ceiling_json_loads_eps")),
        ("ceiling\nparse_event", figures.get("ceiling_parse_event_eps")),
        ("classifier\n1 worker", figures.get("classifier_one_worker_eps")),
        ("classifier\n2 workers", figures.get("classifier_two_workers_eps")),
        ("gateway\nbatches of 500", figures.get("gateway_eps")),
    ]
    values = [value or 0 for _, value in names]
    drawn = bars.bar([name for name, _ in names], values, color="#4c72b0")
    bars.bar_label(drawn, labels=[f"{v:,.0f}" for v in values], fontsize=8)
    bars.axhline(20_000, color="#c44e52", linestyle="--", label="target: 20,000 events/s/worker")
    bars.set_yscale("log")
    bars.set_ylabel("events/s (log)")
    bars.set_title("throughput")
    bars.legend(fontsize=8)

    progress = axes[0][1]
    for workers in (1, 2):
        run = result.get(f"classifier_{workers}", {})
        samples = run.get("throughput_samples") or []
        if samples:
            (line,) = progress.plot(
                [s[0] for s in samples],
                [s[1] for s in samples],
                label=f"{workers} worker{'s' if workers > 1 else ''}",
            )
            done = run.get("seconds_to_lag_zero")
            if done is not None:  # the last pass: every patient decided and published, lag 0
                progress.plot(
                    [samples[-1][0], done],
                    [samples[-1][1]] * 2,
                    "o:",
                    markevery=[1],
                    color=line.get_color(),
                )
    progress.plot([], [], "ko:", markevery=[1], label="deciding, then published and lag 0")
    progress.set_xlabel("seconds since the workers were started (backfill already produced)")
    progress.set_ylabel("records processed")
    progress.set_title("classifier backfill")
    if progress.get_legend_handles_labels()[0]:
        progress.legend(fontsize=8)

    _pipeline(axes[0][2], result.get("pipeline", {}))

    latency = axes[1][0]
    e2e = result.get("latency", {})
    during = e2e.get("during_backfill", {})
    for source, key, label in (
        (e2e, "latency_samples_ms", "event → determination processed"),
        (e2e, "task_samples_ms", "request → first task change"),
        (during, "latency_samples_ms", "event → determination, during a backfill"),
    ):
        samples = [value for value in source.get(key) or [] if value > 0]  # log scale
        if samples:
            share = [(n + 1) / len(samples) for n in range(len(samples))]
            latency.plot(samples, share, label=f"{label} (n={len(samples):,})")
    latency.axvline(250, color="#c44e52", linestyle="--", label="target p99: 250 ms")
    latency.axvline(500, color="#dd8452", linestyle="--", label="target p99, task: 500 ms")
    latency.axhline(0.99, color="grey", linewidth=0.5)
    latency.set_xscale("log")
    latency.set_xlabel("ms after the gateway's 202")
    latency.set_ylabel("share of events")
    latency.set_title(f"end-to-end at {e2e.get('target_eps', '?')} events/s")
    latency.legend(fontsize=8)

    memory = axes[1][1]
    rss = {k: v for k, v in (result.get("peak_rss_bytes") or {}).items() if v}
    if rss:
        names = sorted(rss)
        memory.barh(names, [rss[name] / 2**20 for name in names], color="#55a868")
        memory.tick_params(axis="y", labelsize=8)
    memory.set_xlabel("peak RSS (MiB)")
    memory.set_title("memory per process")

    _against_targets(axes[1][2], result.get("targets") or [])

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pipeline(axis, pipeline: dict) -> None:
    """What each stage still had to do, over the pipeline's run."""
    columns, samples = pipeline.get("lag_columns") or [], pipeline.get("lag_samples") or []
    if samples:
        seconds = [sample[0] for sample in samples]
        for index, name in enumerate(columns):
            if index < 2:  # the time, and the classifiers' counter
                continue
            label = {
                "classifier": "classifier: events not committed",
                "coordinator": "coordinator: determinations not applied",
                "coordinator_backfill": "coordinator: backfill determinations not applied",
                "timeline": "coordinator: events not in the timeline",
                "timeline_backfill": "coordinator: backfill events not in the timeline",
                "outbox": "outbox: task changes not published",
            }.get(name, name)
            axis.plot(seconds, [sample[index] for sample in samples], label=label)
        axis.legend(fontsize=8)
    axis.set_xlabel("seconds since the services were started (events already produced)")
    axis.set_ylabel("records behind")
    axis.set_title(f"whole pipeline, {pipeline.get('events', 0):,} events")


def _against_targets(axis, targets: list[dict]) -> None:
    """Each target's figure as a multiple of its goal, the right way up: above 1 is met."""
    rows = []
    for target in targets:
        value, goal = target.get("value"), target.get("goal")
        if value is None or not goal or value <= 0:
            continue
        higher = target.get("higher_is_better")
        rows.append((str(target["key"]), value / goal if higher else goal / value))
    if rows:
        names = [name for name, _ in rows]
        margins = [margin for _, margin in rows]
        colours = ["#55a868" if margin >= 1 else "#c44e52" for margin in margins]
        axis.barh(names, margins, color=colours)
        axis.axvline(1, color="black", linewidth=0.8)
        axis.set_xscale("log")
        axis.tick_params(axis="y", labelsize=8)
        axis.invert_yaxis()  # in the table's order
    axis.set_xlabel("times better than the target (log; ≥ 1: met)")
    axis.set_title("figures against their targets")
