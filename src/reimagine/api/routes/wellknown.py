"""Unauthenticated documents: the webhook JWKS and Prometheus metrics.

`/metrics` has no auth, like most exporters: it reveals queue sizes and counters, no job data. Expose the API
port publicly only behind a proxy that blocks `/metrics`, or scrape it over a private network.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

router = APIRouter()


@router.get("/.well-known/jwks.json", summary="Webhook signing keys", include_in_schema=True)
async def get_jwks(request: Request) -> JSONResponse:
    """The Ed25519 public keys that verify `X-Fal-Webhook-Signature` (use this instead of fal's JWKS URL)."""
    # Receivers cache the JWKS (fal's verifiers: up to 24 h); the key only changes if the key file is replaced.
    return JSONResponse(request.app.state.webhook_key.jwks(), headers={"cache-control": "public, max-age=3600"})


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def get_metrics(request: Request) -> Response:
    """Prometheus exposition text (queue gauges are counted by the store at scrape time)."""
    body, content_type = await asyncio.to_thread(request.app.state.metrics.render)
    return Response(content=body, media_type=content_type)
