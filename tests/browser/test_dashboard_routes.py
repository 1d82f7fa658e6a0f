"""What the dashboard's router serves: two pages and their files, nothing else, never data."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from services.coordinator.dashboard import dashboard_router


def client() -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(dashboard_router())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard")


async def test_the_pages_are_the_same_static_documents_for_every_patient():
    async with client() as http:
        board = await http.get("/dashboard")
        one = await http.get("/dashboard/patients/pt-route-01")
        other = await http.get("/dashboard/patients/pt-route-02")

    assert board.status_code == one.status_code == 200
    assert board.headers["content-type"] == "text/html; charset=utf-8"
    assert one.content == other.content  # the patient id is read by the page's script
    assert b"pt-route-01" not in one.content


async def test_pages_and_files_carry_a_strict_content_security_policy():
    async with client() as http:
        for path in ("/dashboard", "/dashboard/static/board.js", "/dashboard/static/dashboard.css"):
            response = await http.get(path)
            policy = response.headers["content-security-policy"]
            assert response.status_code == 200, path
            assert "script-src 'self'" in policy and "unsafe-inline" not in policy
            assert response.headers["referrer-policy"] == "no-referrer"


async def test_only_the_dashboards_own_files_are_served():
    async with client() as http:
        assert (await http.get("/dashboard/static/board.html")).status_code == 404
        assert (await http.get("/dashboard/static/..%2Fdashboard.py")).status_code == 404
        assert (await http.get("/dashboard/static/nothing.js")).status_code == 404
        script = await http.get("/dashboard/static/timeline.js")
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
