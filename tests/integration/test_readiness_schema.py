"""Readiness tells the truth about the schema: a service whose tables are gone (a dropped
database, issue 13 item 4) is not ready, and says which table is missing."""

from __future__ import annotations

import asyncpg
import pytest

from shared.db import SchemaError, check_schema
from tests.integration.test_coordinator import coordinator  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration


async def drop(database_url: str, table: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(f"DROP TABLE {table} CASCADE")
    finally:
        await connection.close()


async def test_the_gateway_is_not_ready_when_its_table_is_gone(gateway, database_url):
    assert (await gateway.get("/readyz")).status_code == 200

    await drop(database_url, "gateway_accepted_events")
    response = await gateway.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["database"] == (
        "failing: table(s) missing: gateway_accepted_events (run painpath db migrate)"
    )


async def test_the_coordinator_is_not_ready_when_its_tables_are_gone(
    coordinator,  # noqa: F811
    database_url,
):
    await drop(database_url, "task_audit")
    response = await coordinator.get("/readyz")

    assert response.status_code == 503
    assert "table(s) missing: task_audit" in response.json()["checks"]["database"]


async def test_check_schema_names_every_missing_table_and_the_migrations_table(database_url):
    connection = await asyncpg.connect(database_url)
    try:
        with pytest.raises(SchemaError) as missing:
            await check_schema(connection, ["tasks", "care_plans"])
    finally:
        await connection.close()
    assert str(missing.value) == (
        "table(s) missing: care_plans, schema_migrations, tasks (run painpath db migrate)"
    )
