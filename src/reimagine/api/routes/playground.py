"""The playground: a static page at `/` that builds its form from `/openapi.json` (no build step, no auth needed).

`/bria/reimagine/capabilities` tells the page (and any client) which input fields do something on this server.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from reimagine import ENDPOINT_ID
from reimagine.api.state import state_of
from reimagine.config import Settings

router = APIRouter(include_in_schema=False)
#: Public API beside the page (documented in the OpenAPI): what applies on this server.
api_router = APIRouter(tags=["playground"])

_DIR = Path(__file__).resolve().parent.parent / "playground"
# Explicit types: `mimetypes` reads the host's tables, and some map .js to text/plain, which browsers refuse
# to run as a module.
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# The page is small and changes with the server version; revalidating keeps an upgraded server's page fresh.
_HEADERS = {"cache-control": "no-cache", "x-content-type-options": "nosniff"}


def _file(name: str) -> FileResponse:
    path = _DIR / name
    media_type = _CONTENT_TYPES.get(path.suffix)
    if media_type is None or "/" in name or name.startswith(".") or not path.is_file():
        raise HTTPException(status_code=404, detail="Not found")
    return FileResponse(path, media_type=media_type, headers=_HEADERS)


@router.get("/")
def get_playground() -> FileResponse:
    """The playground page."""
    return _file("index.html")


@router.get("/favicon.ico")
def get_favicon() -> FileResponse:
    """Browsers ask for it on every page load; an icon is cheaper than a 404 in every log."""
    return _file("favicon.svg")


@router.get("/playground/{asset}")
def get_playground_asset(asset: str) -> FileResponse:
    """The page's scripts and styles."""
    return _file(asset)


class FieldCapability(BaseModel):
    effective: bool = Field(description="Whether the field changes anything on this server.")
    playground: bool = Field(True, description="Whether the field means anything in a page that follows the queue.")
    reason: str = Field("", description="One line saying why not, when either is false.")


class Capabilities(BaseModel):
    """What applies on this server: the input schema is fal's, but not every field does something everywhere."""

    endpoint: str
    fields: dict[str, FieldCapability] = Field(description="Only the fields that need a word; the others apply.")


@api_router.get("/bria/reimagine/capabilities", summary="Which input fields do something on this server")
def get_capabilities(request: Request) -> Capabilities:
    """Which input fields do something on this server (no key needed: it says nothing about any request)."""
    settings: Settings = state_of(request).settings
    enhancer = settings.enhancer != "off"
    return Capabilities(
        endpoint=ENDPOINT_ID,
        fields={
            "prompt_enhancer": FieldCapability(
                effective=enhancer,
                playground=True,
                reason="" if enhancer else "This server has no prompt enhancer set up: the prompt is used as written.",
            ),
            "sync_mode": FieldCapability(
                effective=True,
                playground=False,
                reason="For direct API calls: this page follows the queue and always shows the stored image.",
            ),
        },
    )
