"""The benchmark's PNG: throughputs against the ceiling, classifier progress, latency, memory."""

from __future__ import annotations

from pathlib import Path


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = result.get("figures", {})
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
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

    latency = axes[1][0]
    e2e = result.get("latency", {})
    for key, label in (
        ("latency_samples_ms", "event → determination processed"),
        ("task_samples_ms", "request → first task change"),
    ):
        samples = [value for value in e2e.get(key) or [] if value > 0]  # log scale
        if samples:
            share = [(n + 1) / len(samples) for n in range(len(samples))]
            latency.plot(samples, share, label=f"{label} (n={len(samples):,})")
    latency.axvline(250, color="#c44e52", linestyle="--", label="target p99: 250 ms")
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

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
