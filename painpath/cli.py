"""The `painpath` command line."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import typer

from shared.logging import configure_logging
from shared.ports import PortTaken
from shared.settings import Settings
from shared.stack import LocalStack, StackError, local_stack, resolve_endpoints

# Kubernetes waits 30 s after SIGTERM: open connections get 5, the services' shutdown the rest.
SHUTDOWN_GRACE_SECONDS = 5

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
stack_app = typer.Typer(no_args_is_help=True, help="The local broker and PostgreSQL.")
topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics of the catalog.")
db_app = typer.Typer(no_args_is_help=True, help="The PostgreSQL schema.")
contract_app = typer.Typer(no_args_is_help=True, help="The event contract's documents.")
group_app = typer.Typer(no_args_is_help=True, help="The classifier's consumer group.")
app.add_typer(stack_app, name="stack")
app.add_typer(topics_app, name="topics")
app.add_typer(db_app, name="db")
app.add_typer(contract_app, name="contract")
app.add_typer(group_app, name="group")


def _settings() -> Settings:
    settings = Settings()
    configure_logging(
        settings.log_level,
        settings.log_pseudonym_key.get_secret_value() if settings.log_pseudonym_key else None,
    )
    return settings


@stack_app.command("up")
def stack_up() -> None:
    """Start the Tansu broker and the embedded PostgreSQL (reusing what already runs).

    A new broker (after the previous one died) gets the catalog's topics at once, for the
    services that may still run; the database is kept as it is, never emptied."""
    from shared.kafka import create_topics

    settings = _settings()
    stack = local_stack(settings)
    was_running = stack.state() is not None
    state = stack.up()
    for note in stack.notes:
        typer.echo(note)
    typer.echo(f"broker    {state.bootstrap_servers} (pid {state.broker_pid})")
    typer.echo(f"database  {state.database_url}")
    typer.echo(f"state     {settings.painpath_state_dir.resolve()}")
    typer.echo("local gateway API key: painpath stack key")
    if not was_running:  # a new, empty broker: a topic a client auto-created is made again
        asyncio.run(create_topics(settings, state.bootstrap_servers, recreate_empty=True))
    if state.broker_lost:
        typer.echo(
            "a new broker replaced the one the database's events came through: its topics are"
            " empty (created again); the database is kept as it was, nothing dropped."
            " `painpath run` keeps what people did and replays its feed;"
            " `painpath run --fresh` empties the database first"
        )


@stack_app.command("down")
def stack_down() -> None:
    """Stop the local broker and PostgreSQL (the database's data is kept). Refused while a
    `painpath run` uses them: stop it (Ctrl-C), which stops them too when it started them."""
    stack = LocalStack(_settings().painpath_state_dir)
    state = stack.state()
    if state is not None and state.run_pid and _pid_alive(state.run_pid):
        _fail(
            f"a painpath run (pid {state.run_pid}) uses the local stack: stop it first (Ctrl-C);"
            " stopping the broker and PostgreSQL under its services would fail their requests"
        )
    stack.down()
    typer.echo("stopped")


@stack_app.command("key")
def stack_key(
    admin: bool = typer.Option(False, "--admin", help="The coordinators' API admin token instead"),
) -> None:
    """Print the local gateway's API key (allowed every source), or the local admin token."""
    settings = _settings()
    state = LocalStack(settings.painpath_state_dir).state()
    if state is None:
        raise typer.BadParameter("the local stack is not running: painpath stack up")
    configured = settings.coordinator_tokens if admin else settings.gateway_api_keys
    if configured:
        variable = "COORDINATOR_TOKENS" if admin else "GATEWAY_API_KEYS"
        typer.echo(
            f"note: {variable} is set, so the services accept its entries"
            f" ({', '.join(entry.name for entry in configured)}), not this local one",
            err=True,
        )
    typer.echo(state.admin_token if admin else state.api_key)


@topics_app.command("create")
def topics_create() -> None:
    """Create every topic of the catalog with its partitions and configs (idempotent)."""
    from shared.kafka import create_topics

    settings = _settings()
    endpoints = resolve_endpoints(settings)
    for result in asyncio.run(create_topics(settings, endpoints.bootstrap_servers)):
        verb = "created" if result.created else "exists "
        typer.echo(f"{verb}  {result.name}  ({result.partitions} partitions)")


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply the schema migrations not yet applied (idempotent)."""
    from shared.db import migrate

    endpoints = resolve_endpoints(_settings())
    applied = asyncio.run(migrate(endpoints.database_url))
    typer.echo(
        f"applied {len(applied)} migration(s)"
        + "".join(f"\n  {m.version:04d}_{m.name}" for m in applied)
    )


@group_app.command("status")
def group_status(
    as_json: bool = typer.Option(False, "--json", help="The whole status as JSON"),
    wait: float = typer.Option(
        0, help="Seconds to wait for the group to be ready (0: one observation)", min=0
    ),
) -> None:
    """Is the classifier group ready as a whole: members, unowned and stalled partitions, lag.

    Exit status 0 when ready, 1 when not (so scripts can wait on it), 2 when the broker does not
    answer.
    """
    from aiokafka.errors import KafkaError

    from painpath.group import wait_group_ready

    settings = _settings()
    endpoints = resolve_endpoints(settings)
    try:
        status = asyncio.run(wait_group_ready(settings, endpoints.bootstrap_servers, wait))
    except KafkaError as error:
        typer.echo(f"error: the broker did not answer ({type(error).__name__})", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(status.as_dict(), indent=2) if as_json else status.describe())
    raise typer.Exit(0 if status.ready else 1)


@app.command()
def gateway(
    host: str = typer.Option(None, help="Default: GATEWAY_HOST"),
    port: int = typer.Option(None, help="Default: GATEWAY_PORT"),
) -> None:
    """Run the ingest gateway (HTTP)."""

    from services.gateway.app import create_app

    settings = _settings()
    endpoints = resolve_endpoints(settings)
    configure_logging(settings.log_level, endpoints.pseudonym_key)
    _serve(
        "gateway",
        create_app(settings, endpoints),
        host or settings.gateway_host,
        port or settings.gateway_port,
    )


@app.command()
def simulate(
    patients: int = typer.Option(200, min=1),
    seed: int = typer.Option(1),
    out: Path = typer.Option(..., dir_okay=False, help="The JSON-lines file to write"),
    as_of: datetime = typer.Option(
        "2026-06-30T00:00:00+00:00", "--as-of", help="Every history ends before this instant"
    ),
) -> None:
    """Write a reproducible simulated hospital feed (CloudEvents, JSON lines)."""
    from painpath.simulate import write_feed

    if as_of.tzinfo is None:
        raise typer.BadParameter("--as-of needs an offset, e.g. 2026-06-30T00:00:00Z")
    stats = write_feed(out, patients, seed, as_of=as_of)
    typer.echo(
        f"{stats.events} events for {stats.patients} patients: {stats.duplicates} duplicates,"
        f" {stats.retractions} retractions, {stats.late} late, {stats.invalid} invalid -> {out}"
    )


@app.command()
def run(
    classifiers: int = typer.Option(2, min=1, help="Classifier workers to start"),
    patients: int = typer.Option(200, min=0, help="Patients in the replayed feed (0: no replay)"),
    seed: int = typer.Option(1, help="The simulated feed's seed"),
    fresh: bool = typer.Option(
        False, "--fresh", help="Empty the local database first (tasks, outcomes, audit too)"
    ),
) -> None:
    """Run the whole system locally, replay a simulated hospital feed, and keep running.

    What people did in earlier runs (task completions, outcomes, the audit trail) is kept
    unless --fresh is given; the console says what was kept and what is replayed."""
    import os
    import threading

    from painpath.run import Service, run_services
    from shared.db import migrate
    from shared.kafka import create_topics

    settings = _settings()
    me = os.getpid()
    stack = local_stack(settings, owner_pid=me)
    _refuse_a_second_run(stack, settings)
    endpoints = resolve_endpoints(settings, stack)
    for note in stack.notes:
        typer.echo(note)
    state = stack.state() if endpoints.local else None
    owns_stack = state is not None and _owns_stack(stack, state, me)
    if fresh:
        if state is None:
            _fail("--fresh empties the local stack's database only; DATABASE_URL is set")
        stack.reset_database(state)
        typer.echo("--fresh: emptied the local database")
    asyncio.run(create_topics(settings, endpoints.bootstrap_servers))
    asyncio.run(migrate(endpoints.database_url))
    from painpath.replay import replay_after_broker_loss

    # Start-up after a broker loss: every event the gateway kept is published again before any
    # service starts (`painpath.replay`); then what is kept is said (`painpath.restart`).
    replayed = replay_after_broker_loss(settings, endpoints, typer.echo)
    feed = _feed_file(settings, patients, seed) if patients else None
    hold_classifiers = state is not None and _say_what_is_kept(
        stack, endpoints.database_url, feed, replayed is not None
    )
    published = threading.Event()  # the feed is on the broker (or will not be)
    ports = _choose_ports(settings, classifiers)
    if endpoints.local:
        # The local broker makes a joining member wait about half its session timeout: 3 s
        # (heartbeats every second; the workers hold their loop at most a fraction of a second,
        # `painpath_classifier_loop_stall_max_seconds`) makes a restarted worker ready in about
        # 3 s instead of 12. Apache Kafka refuses less than 6 s; the default stays 10 s.
        os.environ.setdefault("CLASSIFIER_SESSION_TIMEOUT_SECONDS", "3")
    gateway = f"http://{settings.gateway_host}:{ports['gateway']}"
    coordinator = f"http://{settings.coordinator_host}:{ports['coordinator']}"
    services = [
        Service("gateway", ["gateway", "--port", str(ports["gateway"])], f"{gateway}/readyz"),
        Service(
            "coordinator",
            ["coordinator", "--port", str(ports["coordinator"])],
            f"{coordinator}/readyz",
        ),
    ]
    for number in range(classifiers):
        port = ports[f"classifier-{number + 1}"]
        services.append(
            Service(
                f"classifier-{number + 1}",
                ["classifier", "--port", str(port)],
                f"http://{settings.classifier_host}:{port}/readyz",
                held_until=published if hold_classifiers else None,
            )
        )
    typer.echo(f"gateway      {gateway}  (API key: {_key_hint(settings)})")
    typer.echo(f"coordinator  {coordinator}  (token: {_token_hint(settings)})")

    def record(services: list[Service]) -> None:
        if state is not None:
            stack.update(
                run_pid=me,
                services={
                    s.name: {"url": s.ready_url.removesuffix("/readyz"), "pid": s.process.pid}
                    for s in services
                },
            )

    def replay() -> None:
        from painpath.group import report_group_ready

        try:
            if not hold_classifiers:  # held workers join once the feed is published
                report_group_ready(settings, endpoints.bootstrap_servers, typer.echo)
            if feed is not None:
                _replay(settings, endpoints, gateway, coordinator, feed, published.set)
        finally:
            published.set()

    log_dir = settings.painpath_state_dir / "logs"
    try:
        status = run_services(services, typer.echo, log_dir, replay, on_change=record)
    finally:
        if state is not None and stack.state() is not None:
            stack.update(run_pid=0, services={})
    if owns_stack:  # the broker and PostgreSQL are the last things stopped
        stack.down()
        typer.echo("stopped the local broker and PostgreSQL")
    raise typer.Exit(status)


def _refuse_a_second_run(stack: LocalStack, settings: Settings) -> None:
    """One run per state folder: a second would talk to the first one's services."""
    state = stack.state()
    if state is not None and state.run_pid and _pid_alive(state.run_pid):
        _fail(
            f"another painpath run (pid {state.run_pid}) uses the local stack in"
            f" {settings.painpath_state_dir}: stop it first, or set PAINPATH_STATE_DIR"
        )


def _owns_stack(stack: LocalStack, state, me: int) -> bool:
    """Whether this run stops the local stack at its end: it started it, or the run that did is
    gone (SIGKILLed: its broker and PostgreSQL outlived it, and this run adopts them)."""
    if state.owner_pid == me:
        return True
    if state.owner_pid != 0 and not _pid_alive(state.owner_pid):
        stack.update(owner_pid=me)
        return True
    return False  # `painpath stack up` started it, or another live process


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _pid_alive(pid: int) -> bool:
    from shared.stack import _pid_alive as alive

    return alive(pid)


def _key_hint(settings: Settings) -> str:
    if settings.gateway_api_keys:
        names = ", ".join(key.name for key in settings.gateway_api_keys)
        return f"one of GATEWAY_API_KEYS: {names}"
    return "painpath stack key"


def _token_hint(settings: Settings) -> str:
    """Where the token the coordinator accepts is: the local one only if no tokens are set."""
    if settings.coordinator_tokens:
        return "one of COORDINATOR_TOKENS: " + ", ".join(
            f"{token.name} ({token.role})" for token in settings.coordinator_tokens
        )
    return "painpath stack key --admin"


def _choose_ports(settings: Settings, classifiers: int) -> dict[str, int]:
    """Each service's port: its setting if free; a free one (said) if the default is taken;
    one line naming the variable if a port that was set is taken. Worker N takes
    CLASSIFIER_PORT + N - 1, or a free port when that one is taken."""
    from shared.ports import choose_port, free_port

    explicit = settings.model_fields_set
    wanted = [
        ("gateway", settings.gateway_port, "GATEWAY_PORT", "gateway_port" in explicit),
        (
            "coordinator",
            settings.coordinator_port,
            "COORDINATOR_PORT",
            "coordinator_port" in explicit,
        ),
    ] + [
        (
            f"classifier-{n + 1}",
            settings.classifier_port + n,
            "CLASSIFIER_PORT",
            n == 0 and "classifier_port" in explicit,
        )
        for n in range(classifiers)
    ]
    ports: dict[str, int] = {}
    for name, port, variable, was_set in wanted:
        if port in ports.values():  # e.g. CLASSIFIER_PORT + N is the coordinator's
            port = free_port()
        try:
            chosen, note = choose_port(port, variable, was_set)
        except PortTaken as taken:
            _fail(str(taken))
        if note:
            typer.echo(f"{name}: {note}")
        ports[name] = chosen
    return ports


def _feed_file(settings: Settings, patients: int, seed: int) -> Path:
    """The simulated feed, ending today (UTC midnight) so that statuses as of now are the ones
    it implies; written once per day, patients and seed."""
    from painpath.simulate import write_feed

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    feed = settings.painpath_state_dir / f"feed-{patients}-{seed}-{today:%Y%m%d}.jsonl"
    if not feed.exists():
        settings.painpath_state_dir.mkdir(parents=True, exist_ok=True)
        write_feed(feed, patients, seed, as_of=today)
    return feed


def _say_what_is_kept(
    stack: LocalStack, database_url: str, feed: Path | None, replayed: bool
) -> bool:
    """Say what the local database keeps of earlier runs, and, when the broker holding their
    events is gone, what this run replays (see `painpath.restart`). `replayed`: the gateway's
    kept events were published again already (`painpath.replay`), the feed's among them. True
    when the classifier workers should start only once the feed is published again."""
    from painpath.restart import after_broker_loss, kept_state

    state = stack.state()
    kept = asyncio.run(kept_state(database_url))
    if kept.anything:
        typer.echo(f"kept from earlier runs: {kept.describe()}")
    if not state.broker_lost:
        return False
    if replayed:  # every kept event is on the new broker before any worker starts
        stack.update(database_broker_id=state.broker_id)
        return False
    typer.echo(asyncio.run(after_broker_loss(database_url, feed)))
    stack.update(database_broker_id=state.broker_id)
    if feed is None or not kept.care_plans:
        return False
    typer.echo(
        "the classifier workers start once the feed is published: each patient is then decided"
        " once on its whole history, not first on its earliest events (which would cancel"
        " the open tasks of the plans kept and propose them again)"
    )
    return True


def _replay(
    settings, endpoints, gateway: str, coordinator: str, feed: Path, on_published=None
) -> None:
    """Replay a simulated feed through the gateway, wait until it settled, print the summary.
    `on_published` is called once the whole feed is on the broker."""
    from rich.console import Console
    from rich.table import Table

    from painpath.publish import publish_file
    from painpath.summary import summarize, wait_until_settled

    local_key = next(key.key.get_secret_value() for key in endpoints.api_keys)
    published = publish_file(feed, gateway, local_key)
    if on_published is not None:
        on_published()
    typer.echo("waiting for the classifier and the coordinator to catch up ...")
    waited = asyncio.run(
        wait_until_settled(settings, endpoints.bootstrap_servers, endpoints.database_url)
    )
    summary = asyncio.run(summarize(endpoints.database_url))
    console = Console()
    console.print(
        f"\nfeed: {feed}  accepted {published.accepted}, duplicate {published.duplicate},"
        f" conflict {published.conflict}, rejected {published.rejected}"
        f" (settled {waited:.0f} s after the last batch)"
    )
    for reason in published.first_reasons[:3]:
        console.print(f"  {reason}")
    statuses = Table(title="patients by status")
    statuses.add_column("status")
    statuses.add_column("patients", justify="right")
    for status, count in summary.patients_by_status.items():
        statuses.add_row(status, str(count))
    console.print(statuses)
    tasks = Table(title="tasks by role and state")
    states = sorted({state for _, state in summary.tasks_by_role_and_state})
    tasks.add_column("role")
    for state in states:
        tasks.add_column(state, justify="right")
    for role in sorted({role for role, _ in summary.tasks_by_role_and_state}):
        tasks.add_row(
            role, *(str(summary.tasks_by_role_and_state.get((role, s), 0)) for s in states)
        )
    console.print(tasks)
    if summary.slowest_event_to_task_seconds is not None:
        console.print(
            f"slowest event-to-task latency: {summary.slowest_event_to_task_seconds:.2f} s"
            " (from the gateway's acceptance to the task, during the replay's burst)"
        )
    console.print(f"dashboard: {coordinator}/dashboard  (token: {_token_hint(settings)})")


@app.command()
def replay(
    since: datetime = typer.Option(
        ..., "--since", help="Replay the events accepted at or after this instant (RFC 3339)"
    ),
    reason: str = typer.Option(
        "operator replay", help="Why (kept in the audit record of the replay)"
    ),
    operator: str = typer.Option(None, help="Who runs it (default: the OS user)"),
) -> None:
    """Publish again, in acceptance order, every event the gateway accepted since --since.

    After a Kafka disaster (the events topic lost or re-created, the local broker restarted):
    the gateway keeps each accepted record as published for GATEWAY_IDEMPOTENCY_RETENTION_DAYS.
    Idempotent: consumers drop an event they already have (same source, id and content).
    """
    from painpath.replay import replay_with_progress
    from shared.db import migrate

    if since.tzinfo is None:
        raise typer.BadParameter(
            "needs an offset, e.g. 2026-06-30T00:00:00Z", param_hint="'--since'"
        )
    settings = _settings()
    endpoints = resolve_endpoints(settings)
    asyncio.run(migrate(endpoints.database_url))
    result = asyncio.run(replay_with_progress(settings, endpoints, since, reason, operator))
    typer.echo(
        f"replayed {result.published} events in {result.seconds:.1f} s (audit: replay"
        f" {result.replay_id})"
    )
    if result.not_kept:
        typer.echo(
            f"{result.not_kept} events accepted since then were claimed before the gateway kept"
            " records: they cannot be replayed"
        )


@app.command()
def coordinator(
    port: int = typer.Option(None, help="Default: COORDINATOR_PORT"),
) -> None:
    """Run the coordinator: care plans and tasks from determinations, its API and task stream."""

    from services.coordinator.app import create_app
    from services.coordinator.scheduling import load_roster
    from services.coordinator.templates import load_templates

    settings = _settings()
    try:
        templates = load_templates(settings.coordinator_templates_file)
        roster = load_roster(settings.coordinator_roster_file)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    endpoints = resolve_endpoints(settings)
    configure_logging(settings.log_level, endpoints.pseudonym_key)
    _serve(
        "coordinator",
        create_app(settings, endpoints, templates, roster),
        settings.coordinator_host,
        port or settings.coordinator_port,
    )


@app.command()
def classify(
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="JSON lines, one event each"
    ),
    as_of: datetime = typer.Option(..., "--as-of", help="The instant T, RFC 3339 with offset"),
    policy_file: Path = typer.Option(None, "--policy", exists=True, dir_okay=False),
    explain: bool = typer.Option(False, "--explain", help="Readable text instead of JSON"),
) -> None:
    """Determinations as of an instant, one per patient (sorted by patient_id).

    Each line is read as the streaming classifier reads a record: a line that is too large, not
    UTF-8 or breaks the contract is reported on standard error with its line number and reason,
    and the rest are still classified. The first of two lines with the same source and id wins.
    A patient whose decision fails (a bug in a rule) is set aside: one line on standard error
    names its lines and the error, and the other patients are still printed. --as-of must lie
    within the contract's instants, 1900-01-01T00:00:00Z to 9999-12-31T00:00:00Z.

    Exit status: 0 when the file was read, even with refused lines or patients set aside (each
    reported on standard error); 2 for a bad option (an --as-of without an offset or out of
    range, a malformed policy file).
    """
    from services.classifier.offline import (
        EARLIEST_AS_OF,
        LATEST_AS_OF,
        SetAside,
        as_of_in_range,
        classify_file,
    )
    from services.classifier.offline import explain as explain_text
    from services.classifier.policy import PolicyError, load_policy

    _settings()
    if as_of.tzinfo is None:
        raise typer.BadParameter(
            "needs an offset, e.g. 2026-06-30T00:00:00Z", param_hint="'--as-of'"
        )
    if not as_of_in_range(as_of):
        raise typer.BadParameter(
            f"must lie within {EARLIEST_AS_OF:%Y-%m-%dT%H:%M:%SZ} .."
            f" {LATEST_AS_OF:%Y-%m-%dT%H:%M:%SZ} in UTC, as every event's time does",
            param_hint="'--as-of'",
        )
    try:
        policy = load_policy(policy_file)
    except PolicyError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    determinations, refused = classify_file(file, policy, as_of)
    for bad in refused:
        typer.echo(f"line {bad.line}: {bad.reason}", err=True)
    for determination in determinations:
        if isinstance(determination, SetAside):
            typer.echo(determination.describe(), err=True)
            continue
        typer.echo(
            explain_text(determination) + "\n" if explain else determination.model_dump_json()
        )


@app.command()
def classifier(
    port: int = typer.Option(None, help="Web port (health, metrics); default: CLASSIFIER_PORT"),
) -> None:
    """Run one streaming classifier worker (start several for more throughput)."""
    from services.classifier.app import create_app
    from services.classifier.policy import PolicyError, load_policy

    settings = _settings()
    if port:
        settings = settings.model_copy(update={"classifier_port": port})
    try:
        policy = load_policy(settings.classifier_policy_file)
    except PolicyError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    endpoints = resolve_endpoints(settings)
    configure_logging(settings.log_level, endpoints.pseudonym_key)
    typer.echo(
        f"classifier worker, policy {policy.id}, on http://{settings.classifier_host}:"
        f"{settings.classifier_port}/readyz"
    )
    asgi_app = create_app(settings, endpoints, policy)
    _serve("classifier", asgi_app, settings.classifier_host, settings.classifier_port)


@app.command()
def publish(
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="JSON lines, one event each"
    ),
    gateway_url: str = typer.Option(
        None, "--gateway", help="Default: http://GATEWAY_HOST:GATEWAY_PORT"
    ),
    api_key: str = typer.Option(
        None, envvar="PAINPATH_API_KEY", help="Default: the local stack's key"
    ),
    batch_size: int = typer.Option(500, min=1, max=1000),
    strict: bool = typer.Option(False, help="Exit 1 when any line was rejected"),
) -> None:
    """Send a JSON-lines file of events through the gateway, in batches, with a progress bar."""
    from painpath.publish import PublishError, publish_file

    settings = _settings()
    state = LocalStack(settings.painpath_state_dir).state()
    if api_key is None:
        if settings.gateway_api_keys:
            raise typer.BadParameter(
                "GATEWAY_API_KEYS is set, so the gateway does not take the local key:"
                " give --api-key (or PAINPATH_API_KEY)"
            )
        if state is None:
            raise typer.BadParameter(
                "give --api-key (or PAINPATH_API_KEY), or run painpath stack up"
            )
        api_key = state.api_key
    url = gateway_url or _gateway_url(settings, state)
    try:
        summary = publish_file(file, url, api_key, batch_size)
    except PublishError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(summary.counts())
    for reason in summary.first_reasons:
        typer.echo(f"  {reason}")
    if strict and (summary.rejected or summary.conflict):
        raise typer.Exit(1)


def _gateway_url(settings: Settings, state) -> str:
    """The gateway of the running `painpath run` (its port is in the stack's state file), unless
    GATEWAY_HOST or GATEWAY_PORT says otherwise."""
    recorded = state.service_url("gateway") if state is not None else None
    if recorded and not {"gateway_host", "gateway_port"} & settings.model_fields_set:
        return recorded
    return f"http://{settings.gateway_host}:{settings.gateway_port}"


@contract_app.command("export")
def contract_export(
    check: bool = typer.Option(False, help="Write nothing; exit 1 if a document is out of date"),
    root: Path = typer.Option(Path("."), help="The repository's root"),
) -> None:
    """Generate the JSON Schemas and the AsyncAPI document from the models."""
    from shared.contract.export import export

    stale = export(root, check=check)
    if check and stale:
        typer.echo("out of date (run `make contract`): " + ", ".join(map(str, stale)), err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps({"checked" if check else "written": [str(path) for path in stale]}))


def _serve(name: str, asgi_app, host: str, port: int) -> None:
    """Serve an HTTP service until SIGTERM or Ctrl-C, then stop gracefully: open connections
    (a dashboard's live stream) get `SHUTDOWN_GRACE_SECONDS`, then the app's own shutdown runs.
    The app may stop the server itself through `app.state.server.should_exit`; when it marked
    itself failed (`app.state.failed`: one of its loops died, `shared.supervision`) the command
    exits 1, for its supervisor to start it again."""
    import uvicorn

    typer.echo(f"{name} on http://{host}:{port}  (OpenAPI: http://{host}:{port}/docs)")
    # Our logging is configured already; uvicorn's access log would print paths with patient ids.
    config = uvicorn.Config(
        asgi_app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    server = uvicorn.Server(config)
    asgi_app.state.server = server
    server.run()
    if getattr(asgi_app.state, "failed", False):
        raise typer.Exit(1)


def main() -> None:
    """The command line; a local stack or port problem is one line naming what to change."""
    import sys

    try:
        app()
    except (StackError, PortTaken) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
