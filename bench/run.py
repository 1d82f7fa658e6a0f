"""`make bench` (`python -m bench.run`): throughput, latency and memory of Painpath, in one run.

Starts its own local stack (Tansu broker, embedded PostgreSQL) in a temporary folder with free
ports, then measures, each phase on its own topics (a `KAFKA_TOPIC_PREFIX`) and database:

1. ceiling: a bare aiokafka consumer reading the backfill (json.loads, then parse_event);
2. the classifier, one worker then two, on a backfill of N simulated events already on
   pain.events.v1 (produced before the clock starts), from starting the workers' processes to
   the group's lag reaching 0; and that the last determination per patient equals the offline
   reference; the one worker's RSS per admitted event, its restart, and a takeover of its
   partitions by a new worker with an empty state directory;
3. the whole pipeline: N events already on pain.events.v1 until every determination, timeline
   entry and task change is in PostgreSQL and published (two workers, one coordinator);
4. the gateway's ingest rate with batches of 500;
5. end-to-end latency at a steady rate through gateway, classifiers and coordinator, then again
   while the same workers consume a backfill of N events;
6. every service process's peak memory (VmHWM).

Writes `<results-dir>/<UTC timestamp>.json` and `.png` and prints a table of the figures, their
targets and the previous results file's. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from bench.measure import (
    ONE_MILLION,
    bytes_per_event,
    check_targets,
    comparison_rows,
    idle_until,
    metric_value,
    per_million,
    projected_1m,
    rate,
    ratio,
    summarize_latencies,
    top_frames,
    windowed_rates,
)
from bench.services import (
    Bench,
    Record,
    Service,
    as_records,
    cpu_seconds,
    peak_rss_bytes,
    produce,
    read_all,
    relabel,
    rss_bytes,
)
from painpath.summary import wait_until_settled
from services.classifier.stream import GROUP as CLASSIFIER_GROUP
from services.coordinator.app import BACKFILL_GROUP, TIMELINE_BACKFILL_GROUP, TIMELINE_GROUP
from services.coordinator.app import GROUP as COORDINATOR_GROUP
from shared.kafka import group_lag
from shared.settings import Settings
from shared.topics import DETERMINATIONS, DETERMINATIONS_BACKFILL, EVENTS, EVENTS_BACKFILL

EVENTS_PER_PATIENT = 67  # what the simulator averages (README)
AS_OF = "2026-06-30T00:00:00+00:00"  # the simulated feeds end before it; classifiers decide at it
RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent
PHASES = ("classifier", "pipeline", "gateway", "latency")  # --phases: "classifier" has the ceiling
# Tansu keeps every topic in memory: per backfill event and classifier run, the event itself,
# its copy in the classifier's history topic and a share of the determinations (an estimate,
# checked against the broker's measured peak RSS in the results).
BROKER_BYTES_PER_EVENT_RUN = 2_000


class PhaseError(RuntimeError):
    pass


# --- the feeds ------------------------------------------------------------------------------


def feed_lines(events: int, seed: int, folder: Path) -> list[str]:
    """A simulated feed of about `events` lines (whole patients), as JSON-lines text."""
    from painpath.simulate import write_feed

    patients = max(1, math.ceil(events / EVENTS_PER_PATIENT))
    path = folder / f"feed-{patients}-{seed}.jsonl"
    write_feed(path, patients, seed, progress=False)
    with path.open(encoding="utf-8") as lines:
        return [line.rstrip("\n") for line in lines if line.strip()]


def valid_json(lines: list[str]) -> list[str]:
    """The lines a client can put in a JSON array (the feed has a few truncated events)."""
    kept = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            continue
        kept.append(line)
    return kept


# --- 1. the ceiling -------------------------------------------------------------------------


async def ceiling(bench: Bench, topic: str, total: int, progress: Progress) -> dict:
    from shared.contract import ContractViolation, parse_event

    figures = {}
    for name, parse in (("json_loads", json.loads), ("parse_event", parse_event)):
        task = progress.add_task(f"ceiling: aiokafka + {name}", total=total)
        counted = [0]

        def handle(message, parse=parse, task=task, counted=counted) -> None:
            with contextlib.suppress(ValueError, ContractViolation):
                parse(message.value)
            counted[0] += 1
            if counted[0] % 10_000 == 0:
                progress.advance(task, 10_000)

        started = time.perf_counter()
        count = await read_all(bench.bootstrap_servers, topic, EVENTS.partitions, handle)
        seconds = time.perf_counter() - started
        progress.update(task, completed=count)
        figures[name] = {"events": count, "seconds": round(seconds, 3), "eps": rate(count, seconds)}
    return figures


# --- 2. the classifier ----------------------------------------------------------------------


async def metric_total(
    client: httpx.AsyncClient,
    services: list[Service],
    name: str,
    labels: dict[str, str] | None = None,
) -> float:
    """A metric summed over the workers, and over its labels but those given."""
    total = 0.0
    for service in services:
        text = (await client.get(service.url + "/metrics")).text
        total += metric_value(text, name, labels)
    return total


async def processed_total(client: httpx.AsyncClient, services: list[Service]) -> float:
    """painpath_classifier_events_total summed over outcomes and workers (every input record
    counts once: new, duplicate or dead letter)."""
    return await metric_total(client, services, "painpath_classifier_events_total")


async def classifier_run(
    bench: Bench,
    workers: int,
    records: list[Record],
    progress: Progress,
    profile_seconds: float,
) -> dict:
    prefix = f"bench{secrets.token_hex(3)}w{workers}."
    database_url = await bench.database(f"bench_classifier_{workers}")
    settings = await bench.settings(prefix, database_url)
    folder = bench.work_dir / f"classifier-{workers}"
    env = bench.env(prefix, database_url, folder / "state")
    services = [bench.classifier(f"classifier-{n + 1}", env, folder) for n in range(workers)]
    total = len(records)
    label = f"classifier, {workers} worker{'s' if workers > 1 else ''}"
    task = progress.add_task(f"{label}: starting", total=total)
    result: dict = {"workers": workers, "events": total, "topic_prefix": prefix}
    samples: list[tuple[float, float]] = []
    try:
        # A backfill is history already in the log: it is produced before the clock starts, so
        # that the bench's own producer does not share the workers' cores. The clock starts with
        # the workers' processes, so start-up, joining the group and any rebalance are timed.
        progress.update(task, description=f"{label}: producing the backfill")
        produce_started = time.monotonic()
        await produce(
            bench.bootstrap_servers,
            EVENTS.full_name(prefix),
            records,
            advance=lambda count: progress.advance(task, count),
        )
        result["produce_seconds"] = round(time.monotonic() - produce_started, 2)
        progress.update(task, completed=0, description=f"{label}: starting")
        broker_cpu_at_start = cpu_seconds(bench.broker_pid)
        started = time.monotonic()
        for service in services:
            service.start()
        profiler = None
        deadline = started + max(600.0, total / 100)
        # The first worker's RSS with no state yet: read at each sample before the first record
        # is counted (read before the counter, so no record was counted when it was read).
        state_less_rss: tuple[float, int | None] | None = None
        async with httpx.AsyncClient(timeout=10) as client:
            processed = 0.0
            while processed < total:
                await asyncio.sleep(0.5)
                for service in services:
                    if service.process.poll() is not None:
                        raise PhaseError(f"{service.name} exited: see {folder}")
                rss_now = rss_bytes(services[0].process.pid)
                try:
                    processed = await processed_total(client, services)
                except httpx.TransportError:
                    continue  # still starting
                now = time.monotonic()
                if not processed:
                    state_less_rss = (now - started, rss_now)
                samples.append((now - started, processed))
                progress.update(task, completed=processed, description=f"{label}: classifying")
                if profiler is None and profile_seconds > 0 and processed:
                    profiler = start_profiler(services[0], profile_seconds, folder)
                if now > deadline:
                    raise PhaseError(
                        f"{label}: {processed:.0f} of {total} after {now - started:.0f} s"
                    )
            all_processed = time.monotonic() - started
            group = f"{prefix}{CLASSIFIER_GROUP}"
            while (behind := await group_lag(settings, bench.bootstrap_servers, group, EVENTS)) > 0:
                if time.monotonic() > deadline:
                    raise PhaseError(f"{label}: the group still lags {behind} records")
                await asyncio.sleep(0.25)
            lag_zero = time.monotonic() - started
            if workers == 1:
                result["memory"] = await memory_per_event(client, services[0], state_less_rss)
            # The longest the worker's event loop was held (its heartbeats wait meanwhile).
            result["loop_stall_max_s"] = round(
                max(
                    [
                        await metric_total(
                            client, [service], "painpath_classifier_loop_stall_max_seconds"
                        )
                        for service in services
                    ]
                ),
                3,
            )
            # Who had the CPU meanwhile: the workers and the broker share the machine's cores.
            broker_cpu = cpu_seconds(bench.broker_pid)
            result["cpu_seconds"] = {
                **{service.name: cpu_seconds(service.process.pid) for service in services},
                "broker": None
                if broker_cpu is None or broker_cpu_at_start is None
                else round(broker_cpu - broker_cpu_at_start, 1),
                "available": round(lag_zero * (os.cpu_count() or 1), 1),
            }
        # Throughput is timed from the first record (start-up, joining the group and restoring
        # are a fixed cost, reported apart); the backfill's duration from the processes' start.
        began = idle_until(samples)
        eps = rate(total, lag_zero - began)
        result |= {
            "seconds_to_first_record": round(began, 2),
            "seconds_to_lag_zero": round(lag_zero, 2),
            "seconds_to_all_processed": round(all_processed, 2),
            "eps": eps,
            "eps_all_processed": rate(total, all_processed - began),
            "median_window_eps": _median(windowed_rates(samples)),
            "projected_1m_seconds": round(began + ONE_MILLION / eps, 1) if eps else None,
            "throughput_samples": [[round(t, 2), int(n)] for t, n in samples],
        }
        if profiler is not None:
            result["profile"] = finish_profiler(profiler)
        progress.update(task, description=f"{label}: reading determinations")
        result["last_determinations"] = await last_determinations(bench, prefix)
        if workers == 1:
            progress.update(task, description=f"{label}: restarting the worker")
            result["restart"] = await restart(services[0])
            progress.update(task, description=f"{label}: takeover by a new worker")
            newcomer = bench.classifier("classifier-takeover", env, folder)
            services.append(newcomer)
            result["takeover"] = await takeover(newcomer, total)
    finally:
        for service in services:
            service.stop()
        result["peak_rss_bytes"] = {service.name: service.peak_rss for service in services}
    return result


async def memory_per_event(
    client: httpx.AsyncClient, worker: Service, state_less: tuple[float, int | None] | None
) -> dict:
    """The worker's peak RSS (VmHWM, now that it has admitted the whole backfill) minus its RSS
    with no state (the last sample before its first record), over the events it admitted
    (`painpath_classifier_events_total{outcome="new"}`; duplicates and dead letters add no
    state)."""
    admitted = await metric_total(
        client, [worker], "painpath_classifier_events_total", {"outcome": "new"}
    )
    peak = peak_rss_bytes(worker.process.pid)
    at, baseline = state_less if state_less else (None, None)
    memory = {
        "state_less_rss_bytes": baseline,
        "state_less_rss_at_s": None if at is None else round(at, 2),
        "peak_rss_bytes": peak,
        "events_admitted": int(admitted),
        "bytes_per_event": bytes_per_event(peak, baseline, admitted),
    }
    if memory["bytes_per_event"] is None:
        memory["errors"] = [
            "classifier_rss_bytes_per_event: not measured"
            + (" (no sample before the first record)" if baseline is None else "")
            + (" (no peak RSS)" if peak is None else "")
            + (" (no event admitted)" if admitted <= 0 else "")
        ]
    return memory


async def restart(service: Service) -> dict:
    """Stop the worker holding the whole backfill and start it again: how long until it has
    rebuilt its state from the history topic and is ready (what a rebalance or a deploy costs)."""
    service.stop()
    peak_rss = service.peak_rss
    started = time.monotonic()
    service.start()
    await service.wait_ready(timeout=600)
    ready = time.monotonic() - started
    async with httpx.AsyncClient(timeout=10) as client:
        restoring = await metric_total(client, [service], "painpath_classifier_restore_seconds_sum")
    service.stop()
    service.peak_rss = max(peak_rss or 0, service.peak_rss or 0) or None
    return {"seconds_to_ready": round(ready, 2), "restore_seconds": round(restoring, 2)}


async def takeover(newcomer: Service, events: int) -> dict:
    """A worker that never held the partitions, with an empty state directory, takes them all
    (the worker that held the backfill has stopped): seconds from its start to ready, and per
    million events of the backfill."""
    started = time.monotonic()
    newcomer.start()
    await newcomer.wait_ready(timeout=600)
    ready = time.monotonic() - started
    async with httpx.AsyncClient(timeout=10) as client:
        restoring = await metric_total(
            client, [newcomer], "painpath_classifier_restore_seconds_sum"
        )
    newcomer.stop()
    return {
        "events": events,
        "seconds_to_ready": round(ready, 2),
        "restore_seconds": round(restoring, 2),
        # The restore scaled to a million events; the start and the join, which do not grow
        # with the state, as measured.
        "seconds_to_ready_per_1m": projected_1m(ready, ready - restoring, events)[0],
        "seconds_to_ready_scaled_whole_per_1m": per_million(ready, events),
    }


def _median(values: list[float]) -> float | None:
    from bench.measure import percentile

    value = percentile(values, 50)
    return None if value is None else round(value, 1)


async def last_determinations(bench: Bench, prefix: str) -> dict:
    last: dict[bytes, bytes] = {}

    def handle(message) -> None:
        last[message.key] = message.value

    count = await read_all(
        bench.bootstrap_servers,
        DETERMINATIONS.full_name(prefix),
        DETERMINATIONS.partitions,
        handle,
    )
    return {"records": count, "by_patient": last}


def start_profiler(service: Service, seconds: float, folder: Path):
    """py-spy on a worker for `seconds` (sampling without pausing it), if py-spy is installed."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        return {"error": "py-spy is not installed (pip install py-spy)"}
    output = folder / "profile.txt"
    process = subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(service.process.pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "100",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "py-spy.log").open("wb"),
    )
    return {"process": process, "output": output, "seconds": seconds, "worker": service.name}


def finish_profiler(profiler: dict) -> dict:
    if "error" in profiler:
        return profiler
    try:
        profiler["process"].wait(timeout=profiler["seconds"] + 30)
    except subprocess.TimeoutExpired:
        profiler["process"].kill()
    output: Path = profiler["output"]
    if not output.exists():
        return {"error": "py-spy wrote no profile (ptrace not permitted?)"}
    with output.open() as lines:
        top = top_frames(lines)
    return {"worker": profiler["worker"], "seconds": profiler["seconds"], **top}


def reference(records: list[Record]) -> tuple[dict[bytes, dict], int]:
    """What the stream must end with (`expected_from_records`), keyed by the patient id's bytes."""
    from services.classifier.offline import expected_from_records
    from services.classifier.policy import load_policy

    expected, dead = expected_from_records(records, load_policy(), datetime.fromisoformat(AS_OF))
    return {p.encode(): d.model_dump(mode="json") for p, d in expected.items()}, dead


def compare(expected: dict[bytes, dict], got: dict[bytes, bytes]) -> dict:
    missing = [key for key in expected if key not in got]
    extra = [key for key in got if key not in expected]
    differing = [key for key in expected if key in got and json.loads(got[key]) != expected[key]]
    return {
        "patients": len(expected),
        "missing": len(missing),
        "extra": len(extra),
        "differing": len(differing),
        "mismatches": len(missing) + len(extra) + len(differing),
    }


# --- the whole pipeline -------------------------------------------------------------------


# What `pipeline_lags` reads of each group, in the pipeline's order, and the outbox after them.
PIPELINE_GROUPS = (
    ("classifier", CLASSIFIER_GROUP, (EVENTS, EVENTS_BACKFILL)),
    ("coordinator", COORDINATOR_GROUP, (DETERMINATIONS,)),
    ("coordinator_backfill", BACKFILL_GROUP, (DETERMINATIONS_BACKFILL,)),
    ("timeline", TIMELINE_GROUP, (EVENTS,)),
    ("timeline_backfill", TIMELINE_BACKFILL_GROUP, (EVENTS_BACKFILL,)),
)
LAG_NAMES = [*(name for name, _, _ in PIPELINE_GROUPS), "outbox"]


async def pipeline_lags(settings: Settings, bench: Bench, database_url: str) -> dict[str, int]:
    """What is not through yet, looked at in the pipeline's order (the classifier commits an
    event once its determination is published; the coordinator a determination once its task
    changes are in the outbox), so that all zero means all done: records (of both lanes) the
    classifier's group, the coordinator's four groups and the outbox relay have not finished."""
    servers = bench.bootstrap_servers
    prefix = settings.kafka_topic_prefix
    lags = {}
    for name, group, topics in PIPELINE_GROUPS:
        lags[name] = 0
        for topic in topics:
            lags[name] += await group_lag(settings, servers, f"{prefix}{group}", topic)
    connection = await asyncpg.connect(database_url)
    try:
        lags["outbox"] = await connection.fetchval(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        )
    finally:
        await connection.close()
    return lags


async def pipeline_run(
    bench: Bench, records: list[Record], classifiers: int, progress: Progress
) -> dict:
    """N events on pain.events.v1 before the clock starts; then two classifier workers and one
    coordinator are started, and the clock runs until every event is in the timeline, every
    determination applied and every task change published."""
    prefix = f"bench{secrets.token_hex(3)}pipe."
    database_url = await bench.database("bench_pipeline")
    settings = await bench.settings(prefix, database_url)
    folder = bench.work_dir / "pipeline"
    env = bench.env(prefix, database_url, folder / "state")
    workers = [bench.classifier(f"classifier-{n + 1}", env, folder) for n in range(classifiers)]
    services = [bench.coordinator(env, folder), *workers]
    total = len(records)
    task = progress.add_task("pipeline: producing the events", total=total)
    samples: list[list[float]] = []
    try:
        await produce(
            bench.bootstrap_servers,
            EVENTS.full_name(prefix),
            records,
            advance=lambda count: progress.advance(task, count),
        )
        progress.update(task, completed=0, description="pipeline: starting")
        started = time.monotonic()
        for service in services:
            service.start()
        limit = max(600.0, total / 250)
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                await asyncio.sleep(1.0)
                for service in services:
                    if service.process.poll() is not None:
                        raise PhaseError(f"{service.name} exited: see {folder}")
                try:
                    processed = await processed_total(client, workers)
                except httpx.TransportError:
                    processed = 0.0  # still starting
                lags = await pipeline_lags(settings, bench, database_url)
                now = time.monotonic() - started
                samples.append([round(now, 2), int(processed), *lags.values()])
                progress.update(
                    task,
                    completed=total
                    - max(lags["classifier"], lags["timeline"] + lags["timeline_backfill"]),
                    description="pipeline: lag {classifier}, {coordinator}, {timeline}; outbox"
                    " {outbox}".format(**lags),
                )
                if not any(lags.values()) and processed:
                    break
                if now > limit:
                    raise PhaseError(f"pipeline: still behind after {now:.0f} s: {lags}")
        seconds = samples[-1][0]
        counts = await pipeline_counts(database_url)
    finally:
        for service in reversed(services):
            service.stop()
    startup = idle_until([(at, count) for at, count, *_ in samples])
    one_million, projected = projected_1m(seconds, startup, total)
    return {
        "events": total,
        "classifiers": classifiers,
        "topic_prefix": prefix,
        "seconds": seconds,
        "seconds_to_first_record": startup,
        "eps": rate(total, seconds),
        "seconds_1m": one_million,
        "projected": projected,
        "stored": counts,
        "lag_columns": ["seconds", "classified", *LAG_NAMES],
        "lag_samples": samples,
        "peak_rss_bytes": {service.name: service.peak_rss for service in services},
    }


async def pipeline_counts(database_url: str) -> dict[str, int]:
    connection = await asyncpg.connect(database_url)
    try:
        return {
            table: await connection.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608
            for table in ("determinations", "patient_events", "tasks", "outbox")
        }
    finally:
        await connection.close()


# --- 3. the gateway -------------------------------------------------------------------------


async def gateway_run(
    bench: Bench, lines: list[str], batch_size: int, concurrency: int, progress: Progress
) -> dict:
    prefix = f"bench{secrets.token_hex(3)}gw."
    database_url = await bench.database("bench_gateway")
    await bench.settings(prefix, database_url)
    folder = bench.work_dir / "gateway"
    env = bench.env(prefix, database_url, folder / "state")
    gateway = bench.gateway(env, folder)
    bodies = [
        (len(chunk), ("[" + ",".join(chunk) + "]").encode())
        for chunk in (lines[i : i + batch_size] for i in range(0, len(lines), batch_size))
    ]
    task = progress.add_task("gateway: starting", total=len(lines))
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0, "other": 0}
    try:
        gateway.start()
        await gateway.wait_ready()
        progress.update(task, description=f"gateway: posting batches of {batch_size}")
        queue = list(reversed(bodies))
        headers = {"X-API-Key": bench.api_key, "Content-Type": "application/json"}

        async def client_loop(client: httpx.AsyncClient) -> None:
            while queue:
                size, body = queue.pop()
                response = await client.post(
                    gateway.url + "/v1/events", content=body, headers=headers
                )
                if response.status_code >= 500:
                    raise PhaseError(f"gateway answered {response.status_code}")
                for item in response.json().get("results", []):
                    status = item["status"]
                    counts[status if status in counts else "other"] += 1
                progress.advance(task, size)

        async with httpx.AsyncClient(timeout=120) as client:
            started = time.perf_counter()
            await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
            seconds = time.perf_counter() - started
    finally:
        gateway.stop()
    return {
        "events": len(lines),
        "batch_size": batch_size,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "eps": rate(len(lines), seconds),
        "results": counts,
        "peak_rss_bytes": {"gateway": gateway.peak_rss},
    }


# --- 4. end-to-end latency ------------------------------------------------------------------


async def latency_run(
    bench: Bench,
    lines: list[str],
    events_per_second: float,
    seconds: float,
    batch_size: int,
    classifiers: int,
    progress: Progress,
    backfill: Callable[[], list[Record]] | None = None,
) -> dict:
    """The steady feed posted at `events_per_second` through gateway, classifiers and
    coordinator; then, with `backfill`, the same again (its events relabelled) while the same
    workers consume a backfill produced onto pain.events.v1 right before."""
    prefix = f"bench{secrets.token_hex(3)}e2e."
    database_url = await bench.database("bench_latency")
    settings = await bench.settings(prefix, database_url)
    folder = bench.work_dir / "latency"
    env = bench.env(prefix, database_url, folder / "state")
    services = [
        bench.gateway(env, folder),
        bench.coordinator(env, folder),
        *(bench.classifier(f"classifier-{n + 1}", env, folder) for n in range(classifiers)),
    ]
    gateway = services[0]
    wanted = int(events_per_second * seconds)
    if len(lines) < wanted:
        raise PhaseError(f"the latency feed has {len(lines)} events, {wanted} are needed")
    steady = SteadyFeed(gateway, bench.api_key, events_per_second, batch_size)
    result: dict = {
        "target_eps": events_per_second,
        "batch_size": batch_size,
        "classifiers": classifiers,
    }
    try:
        for service in services:
            service.start()
        for service in services:
            await service.wait_ready()
        posted = await steady.post(lines[:wanted], progress, "end-to-end")
        result["settled_seconds_after_last_post"] = await settled(settings, bench, database_url)
        during: dict | None = None
        if backfill is not None:
            try:
                during = await steady_during_backfill(
                    steady,
                    relabel(lines[:wanted], "e2e-"),
                    backfill(),
                    settings,
                    bench,
                    database_url,
                    progress,
                )
            except Exception as error:  # noqa: BLE001 - the steady figures stand without it
                during = {"errors": [f"latency during a backfill: {type(error).__name__}: {error}"]}
        found = await first_seen(database_url)
    finally:
        for service in reversed(services):
            service.stop()
    result |= steady.figures(posted, found)
    if during is not None:
        if "posted" in during:
            during |= steady.figures(during.pop("posted"), found)
        result["during_backfill"] = during
    result["peak_rss_bytes"] = {service.name: service.peak_rss for service in services}
    return result


async def settled(settings: Settings, bench: Bench, database_url: str, events: int = 0) -> float:
    """Seconds until both consumer groups have lag 0 and the outbox is published."""
    try:
        waited = await wait_until_settled(
            settings,
            bench.bootstrap_servers,
            database_url,
            timeout=max(600.0, events / 250),
            interval=0.5,
        )
    except TimeoutError as error:
        raise PhaseError(str(error)) from None
    return round(waited, 2)


async def steady_during_backfill(
    steady: SteadyFeed,
    lines: list[str],
    backfill: list[Record],
    settings: Settings,
    bench: Bench,
    database_url: str,
    progress: Progress,
) -> dict:
    """The backfill produced onto the phase's backfill lane (pain.events.backfill.v1, where bulk
    loads go), then at once the steady feed, through the gateway onto pain.events.v1."""
    task = progress.add_task("end-to-end: producing a backfill", total=len(backfill))
    produce_started = time.monotonic()
    await produce(
        bench.bootstrap_servers,
        EVENTS_BACKFILL.full_name(settings.kafka_topic_prefix),
        backfill,
        advance=lambda count: progress.advance(task, count),
    )
    produce_seconds = round(time.monotonic() - produce_started, 2)
    posted = await steady.post(lines, progress, "end-to-end, during the backfill")
    group = f"{settings.kafka_topic_prefix}{CLASSIFIER_GROUP}"
    backlog = await group_lag(settings, bench.bootstrap_servers, group, EVENTS_BACKFILL)
    waited = await settled(settings, bench, database_url, len(backfill))
    return {
        "backfill_events": len(backfill),
        "produce_seconds": produce_seconds,
        "classifier_lag_after_last_post": backlog,
        "settled_seconds_after_last_post": waited,
        "posted": posted,
    }


class SteadyFeed:
    """Posts a feed to the gateway at a steady rate, in requests of `batch_size` events, each
    with a trace of its own, and keeps what each request's answer accepted and when."""

    def __init__(self, gateway: Service, api_key: str, events_per_second: float, batch_size: int):
        self.gateway = gateway
        self.headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
        self.events_per_second = events_per_second
        self.batch_size = batch_size

    async def post(self, lines: list[str], progress: Progress, label: str) -> dict:
        size = self.batch_size
        batches = [lines[i : i + size] for i in range(0, len(lines), size)]
        interval = size / self.events_per_second
        task = progress.add_task(f"{label}: {self.events_per_second:g} events/s", total=len(lines))
        requests: list[dict] = []
        failures = 0

        async def post(client: httpx.AsyncClient, batch: list[str]) -> None:
            nonlocal failures
            trace_id = secrets.token_hex(16)
            sent = time.time()
            response = await client.post(
                self.gateway.url + "/v1/events",
                content=("[" + ",".join(batch) + "]").encode(),
                headers=self.headers | {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
            )
            answered = time.time()
            progress.advance(task, len(batch))
            if response.status_code != 202:
                failures += 1
                return
            events = [json.loads(text) for text in batch]
            accepted = [
                (events[item["index"]]["source"], events[item["index"]]["id"])
                for item in response.json()["results"]
                if item["status"] == "accepted"
            ]
            requests.append(
                {"trace_id": trace_id, "sent": sent, "answered": answered, "accepted": accepted}
            )

        async with httpx.AsyncClient(timeout=60) as client:
            started = time.monotonic()
            running = []
            for number, batch in enumerate(batches):
                await asyncio.sleep(max(0.0, started + number * interval - time.monotonic()))
                running.append(asyncio.create_task(post(client, batch)))
            await asyncio.gather(*running)
            sending = time.monotonic() - started
        return {
            "requests": requests,
            "failures": failures,
            "events": len(lines),
            "seconds": sending,
        }

    @staticmethod
    def figures(posted: dict, found: dict) -> dict:
        """Each accepted event's time from the gateway's 202 to the first determination naming
        it, and each request's to the first task change of its trace."""
        to_determination, to_task, without = [], [], 0
        requests = posted["requests"]
        for request in requests:
            for ref in request["accepted"]:
                at = found["determination"].get(ref)
                if at is None:
                    without += 1
                else:
                    to_determination.append(at - request["answered"])
            at = found["task"].get(request["trace_id"])
            if at is not None:
                to_task.append(at - request["answered"])
        answers = [request["answered"] - request["sent"] for request in requests]
        return {
            "achieved_eps": rate(posted["events"], posted["seconds"]),
            "seconds": round(posted["seconds"], 2),
            "events_posted": posted["events"],
            "events_accepted": sum(len(request["accepted"]) for request in requests),
            "failed_requests": posted["failures"],
            "gateway_answer": summarize_latencies(answers),
            "event_to_determination": summarize_latencies(to_determination)
            | {"accepted_events_never_in_a_determination": without},
            "request_to_first_task_change": summarize_latencies(to_task)
            | {"requests": len(requests)},
            "latency_samples_ms": sorted(round(v * 1000, 2) for v in to_determination),
            "task_samples_ms": sorted(round(v * 1000, 2) for v in to_task),
        }


async def first_seen(database_url: str) -> dict:
    """When the coordinator first stored a determination naming each event as evidence
    (`determinations.received_at`, the time its transaction began), and when the first task
    change of each trace was written to the outbox (`outbox.created_at`), in epoch seconds."""
    connection = await asyncpg.connect(database_url)
    try:
        evidence = await connection.fetch(
            """SELECT e.source, e.id, extract(epoch FROM min(d.received_at))::float8
               FROM determinations d
               CROSS JOIN LATERAL jsonb_to_recordset(d.body -> 'evidence_event_ids')
                    AS e(source text, id text)
               GROUP BY 1, 2"""
        )
        tasks = await connection.fetch(
            """SELECT substring(traceparent FROM 4 FOR 32),
                      extract(epoch FROM min(created_at))::float8
               FROM outbox WHERE traceparent IS NOT NULL GROUP BY 1"""
        )
    finally:
        await connection.close()
    return {
        "determination": {(row[0], row[1]): row[2] for row in evidence},
        "task": {row[0]: row[1] for row in tasks},
    }


# --- the run --------------------------------------------------------------------------------


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        memory = psutil.virtual_memory().total
    except ImportError:
        memory = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = "", False
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
        "git_commit": commit + ("+dirty" if dirty else ""),
    }


async def run(args: argparse.Namespace, console: Console) -> dict:
    from shared.stack import LocalStack

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result: dict = {
        "timestamp": stamp,
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine(),
        "errors": [],
    }
    work = Path(tempfile.mkdtemp(prefix="painpath-bench-"))
    stack = LocalStack(work / "stack", broker_port=None)
    columns = (
        TextColumn("{task.description:<48}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        state = stack.up()
        bench = Bench(
            state.bootstrap_servers, state.database_url, work, AS_OF, broker_pid=state.broker_pid
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("simulating the feeds", total=3)
            backfill = as_records(feed_lines(args.events, args.seed, work))
            progress.advance(task)
            latency_lines = valid_json(
                feed_lines(
                    int(args.latency_rate * args.latency_seconds * 1.15) + 1, args.seed + 1, work
                )
            )
            progress.advance(task)
            gateway_lines = valid_json(feed_lines(args.gateway_events, args.seed + 2, work))[
                : args.gateway_events
            ]
            progress.advance(task)
            result["backfill_events"] = len(backfill)

            async def phase(name: str, work: Callable):
                try:
                    result[name] = await work()
                except Exception as error:  # noqa: BLE001 - one phase failing must not lose the rest
                    result["errors"].append(f"{name}: {type(error).__name__}: {error}")
                    console.print(f"[red]{name} failed: {error}[/red]")

            wanted = set(args.phases)
            runs: dict[int, dict] = {}
            for workers in (1, 2) if "classifier" in wanted else ():
                await phase(
                    f"classifier_{workers}",
                    lambda workers=workers: classifier_run(
                        bench,
                        workers,
                        backfill,
                        progress,
                        args.profile_seconds if workers == 1 else 0,
                    ),
                )
                runs[workers] = result.get(f"classifier_{workers}", {})
            if runs.get(1, {}).get("topic_prefix"):
                await phase(
                    "ceiling",
                    lambda: ceiling(
                        bench, EVENTS.full_name(runs[1]["topic_prefix"]), len(backfill), progress
                    ),
                )
            if "pipeline" in wanted:
                await phase(
                    "pipeline",
                    lambda: pipeline_run(bench, backfill, args.latency_classifiers, progress),
                )
            if "gateway" in wanted:
                await phase(
                    "gateway",
                    lambda: gateway_run(
                        bench, gateway_lines, args.gateway_batch, args.gateway_concurrency, progress
                    ),
                )
            if "latency" in wanted:
                await phase(
                    "latency",
                    lambda: latency_run(
                        bench,
                        latency_lines,
                        args.latency_rate,
                        args.latency_seconds,
                        args.latency_batch,
                        args.latency_classifiers,
                        progress,
                        # the backfill again, as other patients and events than the classifier runs'
                        backfill=lambda: as_records(
                            relabel([value.decode() for _, value in backfill], "bf-")
                        ),
                    ),
                )
            task = progress.add_task("offline reference and comparison", total=2)
            expected, dead_letters = reference(backfill)
            progress.advance(task)
            result["reference"] = {"patients": len(expected), "dead_letters": dead_letters}
            for figures in runs.values():
                last = figures.pop("last_determinations", None)
                if last is not None:
                    figures["determinations_published"] = last["records"]
                    figures["check"] = compare(expected, last["by_patient"])
            progress.advance(task)
        result["peak_rss_bytes"] = {
            "broker (tansu)": peak_rss_bytes(state.broker_pid),
            **{
                f"{phase} {name}": value
                for phase in ("classifier_1", "classifier_2", "pipeline", "gateway", "latency")
                for name, value in result.get(phase, {}).get("peak_rss_bytes", {}).items()
            },
        }
    finally:
        stack.down()
        if args.keep:
            console.print(f"kept the run's folder (logs, feeds): {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    result["errors"] += measurement_errors(result)
    result["figures"] = figures_of(result)
    result["targets"] = check_targets(result["figures"])
    result["errors"] += [
        f"{target['key']}: not measured (see the errors above)"
        for target in result["targets"]
        if target["value"] is None
        and args.phases == list(PHASES)  # a partial run leaves the other phases' out
        and not any(target["key"] in e for e in result["errors"])
    ]
    return result


def measurement_errors(result: dict) -> list[str]:
    """What a phase measured only in part: the `errors` its sub-measurements left."""
    one, latency = result.get("classifier_1", {}), result.get("latency", {})
    parts = (one.get("memory", {}), latency.get("during_backfill", {}))
    return [error for part in parts for error in part.get("errors", [])]


def figures_of(result: dict) -> dict:
    one, two = result.get("classifier_1", {}), result.get("classifier_2", {})
    ceiling = result.get("ceiling", {})
    latency = result.get("latency", {})
    during = latency.get("during_backfill", {})
    ceiling_eps = ceiling.get("parse_event", {}).get("eps")
    return {
        # issue 12
        "classifier_one_worker_of_ceiling": ratio(one.get("eps"), ceiling_eps),
        "two_workers_speedup": ratio(two.get("eps"), one.get("eps")),
        "pipeline_1m_seconds": result.get("pipeline", {}).get("seconds_1m"),
        "classifier_restart_ready_s": one.get("restart", {}).get("seconds_to_ready"),
        "classifier_takeover_s_per_1m": one.get("takeover", {}).get("seconds_to_ready_per_1m"),
        "e2e_p99_ms": latency.get("event_to_determination", {}).get("p99_ms"),
        "e2e_task_p99_ms": latency.get("request_to_first_task_change", {}).get("p99_ms"),
        "e2e_p99_during_backfill_ms": during.get("event_to_determination", {}).get("p99_ms"),
        "classifier_rss_bytes_per_event": one.get("memory", {}).get("bytes_per_event"),
        # the rest
        "ceiling_json_loads_eps": ceiling.get("json_loads", {}).get("eps"),
        "ceiling_parse_event_eps": ceiling_eps,
        "classifier_one_worker_eps": one.get("eps"),
        "classifier_two_workers_eps": two.get("eps"),
        "classifier_two_workers_of_ceiling": ratio(two.get("eps"), ceiling_eps),
        "backfill_1m_two_workers_s": two.get("projected_1m_seconds"),
        "classifier_one_worker_start_s": one.get("seconds_to_first_record"),
        "classifier_two_workers_start_s": two.get("seconds_to_first_record"),
        "classifier_restart_restore_s": one.get("restart", {}).get("restore_seconds"),
        "classifier_takeover_ready_s": one.get("takeover", {}).get("seconds_to_ready"),
        "classifier_loop_stall_max_s": max(
            (run["loop_stall_max_s"] for run in (one, two) if "loop_stall_max_s" in run),
            default=None,
        ),
        "determination_mismatches_one_worker": one.get("check", {}).get("mismatches"),
        "determination_mismatches_two_workers": two.get("check", {}).get("mismatches"),
        "gateway_eps": result.get("gateway", {}).get("eps"),
        "e2e_p50_ms": latency.get("event_to_determination", {}).get("p50_ms"),
        "e2e_p95_ms": latency.get("event_to_determination", {}).get("p95_ms"),
        "e2e_p50_during_backfill_ms": during.get("event_to_determination", {}).get("p50_ms"),
    }


def previous_results(results_dir: Path, stamp: str) -> tuple[str, dict] | None:
    """The newest other full run's results file of `results_dir` (by its name, a UTC timestamp;
    for `partial/`, of the folder above it) and its figures, or None when there is none."""
    if results_dir.name == "partial":
        results_dir = results_dir.parent
    older = sorted(path for path in results_dir.glob("*.json") if path.stem != stamp)
    for path in reversed(older):
        try:
            body = json.loads(path.read_text())
            figures = body.get("figures")
            phases = body.get("parameters", {}).get("phases", list(PHASES))
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(figures, dict) and phases == list(PHASES):
            return path.stem, figures
    return None


def print_table(result: dict, console: Console) -> None:
    previous = result.get("previous")
    pipeline = result.get("pipeline", {})
    table = Table(
        title=f"painpath bench {result['timestamp']} ({result['backfill_events']:,}"
        " backfill events; shared, noisy machine)"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target")
    table.add_column("met")
    table.add_column(f"previous ({previous['timestamp']})" if previous else "previous: none")
    rows = comparison_rows(
        result["figures"], result["targets"], previous["figures"] if previous else None
    )
    for label, *cells in rows:
        if label.startswith("1M events through") and pipeline.get("projected"):
            label += " (projected)"
        table.add_row(label, *cells)
    for name, value in sorted(result.get("peak_rss_bytes", {}).items()):
        table.add_row(
            f"peak RSS: {name}", "n/a" if value is None else f"{value / 2**20:,.0f} MiB", "", "", ""
        )
    for workers in (1, 2):
        cpu = result.get(f"classifier_{workers}", {}).get("cpu_seconds")
        if cpu:
            used = ", ".join(
                f"{name} {value:,.0f}"
                for name, value in cpu.items()
                if name != "available" and value is not None
            )
            label = f"CPU s, classifier run with {workers}"
            table.add_row(label, f"{used} of {cpu['available']:,.0f}", "", "", "")
    console.print(table)
    for error in result["errors"]:
        console.print(f"[red]error: {error}[/red]")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--events",
        type=int,
        default=ONE_MILLION,
        help="simulated events in the classifier's backfill (whole patients)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--gateway-events",
        type=int,
        default=None,
        help="events posted to the gateway (default: min(--events, 100000))",
    )
    parser.add_argument("--gateway-batch", type=int, default=500)
    parser.add_argument(
        "--gateway-concurrency", type=int, default=4, help="requests in flight at once"
    )
    parser.add_argument("--latency-seconds", type=float, default=60)
    parser.add_argument("--latency-rate", type=float, default=200, help="events per second")
    parser.add_argument(
        "--latency-batch", type=int, default=10, help="events per request in the latency phase"
    )
    parser.add_argument("--latency-classifiers", type=int, default=2)
    parser.add_argument(
        "--profile-seconds",
        type=float,
        default=20,
        help="py-spy the one-worker classifier for this long (0: no profile)",
    )
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=PHASES,
        default=list(PHASES),
        help="run only these phases (a partial run: its results go to bench/results/partial/,"
        " compared with the last full run)",
    )
    parser.add_argument(
        "--results-dir", type=Path, default=None, help=f"default: {RESULTS.relative_to(ROOT)}"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's folder and logs")
    parser.add_argument(
        "--force", action="store_true", help="run even when the broker may run out of memory"
    )
    args = parser.parse_args(argv)
    if args.gateway_events is None:
        args.gateway_events = min(args.events, 100_000)
    args.phases = [phase for phase in PHASES if phase in args.phases]  # in the run's order
    if args.results_dir is None:
        args.results_dir = RESULTS if args.phases == list(PHASES) else RESULTS / "partial"
    return args


def broker_memory_needed(events: int) -> int:
    """What the local broker will hold, roughly, at the end: the backfill went through the
    classifier four times (one worker, two, the pipeline, the latency phase's backfill)."""
    return 4 * events * BROKER_BYTES_PER_EVENT_RUN


def main(argv: list[str] | None = None) -> int:
    from shared.logging import configure_logging

    args = parse_args(argv)
    needed = broker_memory_needed(args.events)
    try:
        import psutil

        available = psutil.virtual_memory().available
    except ImportError:
        available = None
    if available is not None and needed > 0.8 * available and not args.force:
        print(
            f"refusing: {args.events:,} events would need about {needed / 2**30:.0f} GiB in the"
            f" in-memory local broker; {available / 2**30:.0f} GiB are available. Use fewer"
            " --events, or --force.",
            file=sys.stderr,
        )
        return 2
    # The stack's and the migrations' log lines would break the progress display.
    configure_logging("WARNING", "bench-pseudonym-key")
    console = Console(width=None if sys.stdout.isatty() else 110)
    result = asyncio.run(run(args, console))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    before = previous_results(args.results_dir, result["timestamp"])
    if before is not None:
        result["previous"] = {"timestamp": before[0], "figures": before[1]}
    json_path = args.results_dir / f"{result['timestamp']}.json"
    png_path = args.results_dir / f"{result['timestamp']}.png"
    from bench.plot import plot

    plot(result, png_path)
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_table(result, console)
    console.print(f"results: {json_path}\nplot:    {png_path}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
