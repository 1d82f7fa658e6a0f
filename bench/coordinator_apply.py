"""How fast the coordinator applies a backlog: determinations and timeline events per second.

A real broker and PostgreSQL (`LocalStack`) per run; the backlog (real determinations of
simulated patients, `tests.faults.helpers.determination_feed`, and the same patients' clinical
events) is produced first, then the coordinator app is started and the database polled until
every record is applied. A rate is records / (last applied - first applied), so the consumer
group's join is not counted.

    python -m bench.coordinator_apply --patients 1000 --repeat 3 --baseline /tmp/coord-before

`--baseline` is a checkout of other code (e.g. `git archive main | tar -x -C DIR`, with this
file copied into its bench/): runs of the two trees alternate on the same machine, and the
medians and their ratio are printed, with the figures `coordinator_backfill_determinations_per_s`
and `coordinator_backfill_events_per_s` of this tree.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_feed(patients: int, seed: int, path: Path) -> None:
    from tests.faults.helpers import determination_feed
    from tests.integration.test_classifier_stream import as_records, feed_lines

    with path.open("w") as out:
        for determination in determination_feed(patients=patients, seed=seed):
            out.write(json.dumps(["d", determination.patient_id, determination.model_dump_json()]))
            out.write("\n")
        for key, value in as_records(feed_lines(patients, seed)):
            key_text = key.decode(errors="replace") if key else None
            out.write(json.dumps(["e", key_text, value.decode(errors="replace")]) + "\n")


async def child(feed: Path) -> dict:
    from datetime import date

    import asyncpg
    from aiokafka import AIOKafkaProducer

    from services.coordinator.app import create_app
    from services.coordinator.scheduling import load_roster
    from services.coordinator.templates import load_templates
    from shared.kafka import create_topics
    from shared.logging import configure_logging
    from shared.settings import ApiToken, Settings
    from shared.stack import Endpoints, LocalStack
    from shared.topics import DETERMINATIONS, EVENTS

    configure_logging("WARNING", "bench-key", stream=open(os.devnull, "w"))  # noqa: SIM115
    records = [json.loads(line) for line in feed.open()]
    determinations = [(k, v) for kind, k, v in records if kind == "d"]
    events = [(k, v) for kind, k, v in records if kind == "e"]
    with tempfile.TemporaryDirectory(prefix="painpath-bench-coord-") as folder:
        local = LocalStack(Path(folder), broker_port=None)
        state = local.up()
        try:
            settings = Settings(
                kafka_bootstrap_servers=state.bootstrap_servers,
                database_url=state.database_url,
                kafka_topic_prefix=f"b{uuid.uuid4().hex[:8]}.",
                log_pseudonym_key="bench-key",
                coordinator_session_timeout_seconds=3,
                _env_file=None,
            )
            await create_topics(settings, state.bootstrap_servers)
            producer = AIOKafkaProducer(
                bootstrap_servers=state.bootstrap_servers, acks="all", linger_ms=20
            )
            await producer.start()
            for topic, items in ((DETERMINATIONS, determinations), (EVENTS, events)):
                name = topic.full_name(settings.kafka_topic_prefix)
                for key, value in items:
                    await producer.send(
                        name, key=key.encode() if key else None, value=value.encode()
                    )
            await producer.flush()
            await producer.stop()
            tokens = [ApiToken(name="bench", token="bench-token", role="admin")]
            endpoints = Endpoints(
                bootstrap_servers=state.bootstrap_servers,
                database_url=state.database_url,
                api_keys=[],
                coordinator_tokens=tokens,
                pseudonym_key="bench-key",
                local=False,
            )
            app = create_app(
                settings, endpoints, load_templates(), load_roster(), today=lambda: date(2026, 3, 2)
            )
            async with app.router.lifespan_context(app):
                connection = await asyncpg.connect(state.database_url)
                first: dict[str, float] = {}
                last: dict[str, float] = {}
                seen = {"determinations": 0, "events": 0}
                deadline = time.monotonic() + 900
                while time.monotonic() < deadline:
                    now = time.monotonic()
                    counts = {
                        "determinations": await connection.fetchval(
                            "SELECT count(*) FROM determinations"
                        ),
                        "events": await connection.fetchval("SELECT count(*) FROM patient_events"),
                    }
                    for name, count in counts.items():
                        if count and name not in first:
                            first[name] = now
                        if count != seen[name]:
                            last[name] = now
                            seen[name] = count
                    stable = all(name in last and now - last[name] > 3 for name in seen)
                    if counts["determinations"] >= len(determinations) and stable:
                        break
                    await asyncio.sleep(0.02)
                tasks = await connection.fetchval("SELECT count(*) FROM tasks")
                outbox = await connection.fetchval("SELECT count(*) FROM outbox")
                await connection.close()
        finally:
            local.down()
    return {
        "determinations": seen["determinations"],
        "determinations_sent": len(determinations),
        "events": seen["events"],
        "events_sent": len(events),
        "tasks": tasks,
        "outbox": outbox,
        "determinations_per_s": seen["determinations"]
        / max(1e-9, last["determinations"] - first["determinations"]),
        "events_per_s": seen["events"] / max(1e-9, last["events"] - first["events"]),
    }


def run_tree(tree: Path, feed: Path) -> dict:
    env = os.environ | {"PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.coordinator_apply", "--child", str(feed)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"the run in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a checkout of the code to compare with")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child))))
        return
    with tempfile.TemporaryDirectory(prefix="painpath-bench-feed-") as folder:
        feed = Path(folder) / "feed.jsonl"
        build_feed(args.patients, args.seed, feed)
        trees = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
        results: dict[str, list[dict]] = {name: [] for name in trees}
        for round_number in range(args.repeat):
            for name, tree in trees.items():
                result = run_tree(tree, feed)
                results[name].append(result)
                print(f"round {round_number + 1} {name}: {json.dumps(result)}", flush=True)
    medians = {
        name: {
            key: statistics.median(run[key] for run in runs)
            for key in ("determinations_per_s", "events_per_s")
        }
        for name, runs in results.items()
    }
    for name, median in medians.items():
        print(
            f"{name}: determinations {median['determinations_per_s']:.0f}/s,"
            f" events {median['events_per_s']:.0f}/s (median of {args.repeat})"
        )
    if "baseline" in medians:
        for key in ("determinations_per_s", "events_per_s"):
            ratio = medians["this"][key] / medians["baseline"][key]
            print(f"{key}: x{ratio:.2f} against the baseline")
    print(
        json.dumps(
            {
                "coordinator_backfill_determinations_per_s": round(
                    medians["this"]["determinations_per_s"]
                ),
                "coordinator_backfill_events_per_s": round(medians["this"]["events_per_s"]),
            }
        )
    )


if __name__ == "__main__":
    main()
