"""Liveness and readiness: ready once a worker has loaded and warmed the model (API-only: once the store answers)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from reimagine.api.state import state_of
from reimagine.errors import StorageUnavailable

router = APIRouter()


@router.get("/health/live", summary="Liveness")
async def live() -> JSONResponse:
    """200 while the process serves HTTP."""
    return JSONResponse({"status": "ok"})


@router.get("/health/ready", summary="Readiness")
async def ready(request: Request) -> JSONResponse:
    """200 once requests can be served: the store and the file storage answer, and a worker is warm (unless this
    replica runs none)."""
    state = state_of(request)
    try:
        store_ok = await asyncio.to_thread(state.store.ping)
    except Exception as exc:  # the store being down is exactly what this endpoint reports
        return JSONResponse({"status": "unavailable", "store": str(exc)}, status_code=503)
    try:
        await asyncio.to_thread(state.storage.check)
    except StorageUnavailable as exc:
        return JSONResponse({"status": "unavailable", "store": "ok", "storage": str(exc)}, status_code=503)
    workers = state.workers.describe() if state.workers is not None else {"expected": 0, "ready": 0}
    is_ready = store_ok and (workers["expected"] == 0 or workers["ready"] > 0)
    body = {"status": "ready" if is_ready else "starting", "store": "ok" if store_ok else "down", "workers": workers}
    cause = state.unavailable()
    if cause is not None:
        body.update(status="unavailable", detail=cause)
    if store_ok and await asyncio.to_thread(state.store.admin.is_paused):
        body["queue"] = "paused"  # still ready: submits queue (`reimagine queue resume` starts them)
    return JSONResponse(body, status_code=200 if is_ready else 503)
