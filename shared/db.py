"""PostgreSQL access: connection pools and the versioned schema migrations.

Migrations are the numbered `.sql` files in `shared/migrations/`, applied in order, each in its
own transaction, recorded in `schema_migrations`. A session advisory lock lets several services
start at once: one migrates, the others wait, and nothing is applied twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import asyncpg

from shared.logging import SafeMessage, get_logger

log = get_logger(__name__)

MIGRATION_LOCK = 0x7061696E  # "pain"


class MigrationError(SafeMessage, RuntimeError):
    """An applied migration was changed after it ran, or a migration failed."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("shared.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version, _, name = entry.name.removesuffix(".sql").partition("_")
            found.append(Migration(int(version), name, entry.read_text()))
    return sorted(found, key=lambda migration: migration.version)


async def migrate(database_url: str) -> list[Migration]:
    """Apply the migrations not yet applied; return them. Safe to run concurrently and twice."""
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        await connection.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        applied = {
            row["version"]: row["checksum"]
            for row in await connection.fetch("SELECT version, checksum FROM schema_migrations")
        }
        done = []
        for migration in migrations():
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version}_{migration.name} changed after it was "
                        "applied: add a new migration instead"
                    )
                continue
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("migration_applied", version=migration.version, name=migration.name)
            done.append(migration)
        return done
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        await connection.close()


class SchemaError(SafeMessage, RuntimeError):
    """Tables a service needs are missing (the schema was dropped, or never migrated)."""


async def check_schema(connection: asyncpg.Connection | asyncpg.Pool, tables: list[str]) -> None:
    """Raise SchemaError naming the `tables` missing: a service whose tables are gone is not
    ready (every request would fail), whatever `SELECT 1` says."""
    missing = await connection.fetchval(
        """SELECT array_agg(name ORDER BY name) FROM unnest($1::text[]) AS name
           WHERE to_regclass(name) IS NULL""",
        ["schema_migrations", *tables],
    )
    if missing:
        raise SchemaError(f"table(s) missing: {', '.join(missing)} (run painpath db migrate)")


async def create_pool(database_url: str, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(database_url, min_size=1, max_size=max_size)
