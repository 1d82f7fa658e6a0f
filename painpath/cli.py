"""The `painpath` command line."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import typer

from shared.logging import configure_logging
from shared.settings import Settings
from shared.stack import LocalStack, resolve_endpoints

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
    """Start the Tansu broker and the embedded PostgreSQL (reusing what already runs)."""
    settings = _settings()
    state = LocalStack(settings.painpath_state_dir, settings.painpath_broker_port).up()
    typer.echo(f"broker    {state.bootstrap_servers} (pid {state.broker_pid})")
    typer.echo(f"database  {state.database_url}")
    typer.echo(f"state     {settings.painpath_state_dir.resolve()}")
    typer.echo("local gateway API key: painpath stack key")


@stack_app.command("down")
def stack_down() -> None:
    """Stop the local broker and PostgreSQL (the database's data is kept)."""
    LocalStack(_settings().painpath_state_dir).down()
    typer.echo("stopped")


@stack_app.command("key")
def stack_key(
    admin: bool = typer.Option(False, "--admin", help="The coordinators' API admin token instead"),
) -> None:
    """Print the local gateway's API key (allowed every source), or the local admin token."""
    state = LocalStack(_settings().painpath_state_dir).state()
    if state is None:
        raise typer.BadParameter("the local stack is not running: painpath stack up")
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
) -> None:
    """Run the whole system locally, replay a simulated hospital feed, and keep running."""
    from painpath.run import Service, run_services
    from shared.db import migrate
    from shared.kafka import create_topics

    settings = _settings()
    stack = LocalStack(settings.painpath_state_dir, settings.painpath_broker_port)
    stack_was_running = stack.state() is not None
    endpoints = resolve_endpoints(settings)
    asyncio.run(create_topics(settings, endpoints.bootstrap_servers))
    asyncio.run(migrate(endpoints.database_url))
    from painpath.replay import replay_after_broker_loss

    replay_after_broker_loss(settings, endpoints, typer.echo)
    gateway = f"http://{settings.gateway_host}:{settings.gateway_port}"
    coordinator = f"http://{settings.coordinator_host}:{settings.coordinator_port}"
    services = [
        Service("gateway", ["gateway"], f"{gateway}/readyz"),
        Service("coordinator", ["coordinator"], f"{coordinator}/readyz"),
    ]
    for number in range(classifiers):
        port = settings.classifier_port + number
        services.append(
            Service(
                f"classifier-{number + 1}",
                ["classifier", "--port", str(port)],
                f"http://{settings.classifier_host}:{port}/readyz",
            )
        )
    typer.echo(f"gateway      {gateway}  (API key: painpath stack key)")
    typer.echo(f"coordinator  {coordinator}  (token: painpath stack key --admin)")

    def replay() -> None:
        from painpath.group import report_group_ready

        report_group_ready(settings, endpoints.bootstrap_servers, typer.echo)
        if patients:
            _replay(settings, endpoints, gateway, coordinator, patients, seed)

    log_dir = settings.painpath_state_dir / "logs"
    status = run_services(services, typer.echo, log_dir, replay)
    if endpoints.local and not stack_was_running:  # we started it: we stop it
        stack.down()
        typer.echo("stopped the local broker and PostgreSQL")
    raise typer.Exit(status)


def _replay(settings, endpoints, gateway: str, coordinator: str, patients: int, seed: int) -> None:
    """Replay a simulated feed through the gateway, wait until it settled, print the summary."""
    from rich.console import Console
    from rich.table import Table

    from painpath.publish import publish_file
    from painpath.simulate import write_feed
    from painpath.summary import summarize, wait_until_settled

    # The feed ends today (UTC midnight), so that statuses as of now are the ones it implies.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    feed = settings.painpath_state_dir / f"feed-{patients}-{seed}-{today:%Y%m%d}.jsonl"
    if not feed.exists():
        write_feed(feed, patients, seed, as_of=today)
    local_key = next(key.key.get_secret_value() for key in endpoints.api_keys)
    published = publish_file(feed, gateway, local_key)
    typer.echo("waiting for the classifier and the coordinator to catch up ...")
    waited = asyncio.run(
        wait_until_settled(settings, endpoints.bootstrap_servers, endpoints.database_url)
    )
    summary = asyncio.run(summarize(endpoints.database_url))
    console = Console()
    console.print(
        f"\nfeed: {feed}  accepted {published.accepted}, duplicate {published.duplicate},"
        f" rejected {published.rejected} (settled {waited:.0f} s after the last batch)"
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
    console.print(f"dashboard: {coordinator}/dashboard  (token: painpath stack key --admin)")


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
    if asgi_app.state.failed:
        raise typer.Exit(1)


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
    if api_key is None:
        state = LocalStack(settings.painpath_state_dir).state()
        if state is None:
            raise typer.BadParameter(
                "give --api-key (or PAINPATH_API_KEY), or run painpath stack up"
            )
        api_key = state.api_key
    url = gateway_url or f"http://{settings.gateway_host}:{settings.gateway_port}"
    try:
        summary = publish_file(file, url, api_key, batch_size)
    except PublishError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"accepted {summary.accepted}  duplicate {summary.duplicate}  rejected {summary.rejected}"
    )
    for reason in summary.first_reasons:
        typer.echo(f"  {reason}")
    if strict and summary.rejected:
        raise typer.Exit(1)


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
    The app may stop the server itself through `app.state.server.should_exit`."""
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


def main() -> None:
    app()
