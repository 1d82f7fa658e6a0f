"""The coordinators' dashboard: the task board and the patient pages, as static pages.

The router serves pages and their scripts and styles only; every figure on them comes from the
JSON API (`api.py`), fetched by the browser with the bearer token the user signs in with. The
pages are the same for every patient and every user, so no patient data passes through here, and
the patient id in `/dashboard/patients/{patient_id}` is read by the page's script.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

PAGES = Path(__file__).resolve().parent / "dashboard"
MEDIA_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

# Scripts and styles come from this server only and nothing is framed; the pages carry patient
# ids in their address, so it is never sent on as a referrer.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _page(name: str) -> FileResponse:
    return FileResponse(
        PAGES / name, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS
    )


def dashboard_router() -> APIRouter:
    """Routes of the dashboard: `/dashboard`, `/dashboard/patients/{id}`, `/dashboard/static/*`."""
    router = APIRouter(include_in_schema=False)
    assets = {path.name: path for path in PAGES.iterdir() if path.suffix in MEDIA_TYPES}

    @router.get("/dashboard")
    async def board() -> FileResponse:
        return _page("board.html")

    @router.get("/dashboard/patients/{patient_id}")
    async def patient(patient_id: str) -> FileResponse:
        return _page("patient.html")

    @router.get("/dashboard/static/{name}")
    async def asset(name: str) -> FileResponse:
        path = assets.get(name)
        if path is None:
            raise HTTPException(404, "no such file")
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=SECURITY_HEADERS)

    return router
