"""Documents outside the fal API: the webhook JWKS (public) and Prometheus metrics.

`/metrics` is open by default, like most exporters: it reveals queue sizes, counters and key names, no job data.
`--metrics-token T` makes it require `Authorization: Bearer T` (what Prometheus' `authorization` sends), and
`--metrics-key` an admin API key; with both, either is enough.
"""

from __future__ import annotations

import asyncio
import hmac

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from reimagine.api.auth import authorize
from reimagine.api.state import state_of
from reimagine.config import Settings
from reimagine.queue.keys import Scope

router = APIRouter()


@router.get("/.well-known/jwks.json", summary="Webhook signing keys", include_in_schema=True)
async def get_jwks(request: Request) -> JSONResponse:
    """The Ed25519 public keys that verify `X-Fal-Webhook-Signature` (use this instead of fal's JWKS URL)."""
    # Receivers cache the JWKS (fal's verifiers: up to 24 h); the key only changes if the key file is replaced.
    return JSONResponse(state_of(request).webhook_key.jwks(), headers={"cache-control": "public, max-age=3600"})


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def get_metrics(request: Request) -> Response:
    """Prometheus exposition text (queue gauges are counted by the store at scrape time)."""
    await _check_metrics_access(request)
    body, content_type = await asyncio.to_thread(state_of(request).metrics.render)
    return Response(content=body, media_type=content_type)


async def _check_metrics_access(request: Request) -> None:
    settings: Settings = state_of(request).settings
    if not settings.metrics_token and not settings.metrics_key:
        return
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and settings.metrics_token:
        if hmac.compare_digest(credential.strip().encode(), settings.metrics_token.encode()):
            return
        raise HTTPException(status_code=401, detail="Wrong metrics token")
    if scheme.lower() == "key" and settings.metrics_key:
        await authorize(request, Scope.ADMIN)
        return
    wanted = " or ".join(
        (["`Authorization: Bearer <metrics token>`"] if settings.metrics_token else [])
        + (["an admin `Authorization: Key`"] if settings.metrics_key else [])
    )
    raise HTTPException(status_code=401, detail=f"/metrics requires {wanted}", headers={"www-authenticate": "Bearer"})
