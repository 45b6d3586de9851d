"""The playground: a static page at `/` that builds its form from `/openapi.json` (no build step, no auth needed)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)

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


@router.get("/playground/{asset}")
def get_playground_asset(asset: str) -> FileResponse:
    """The page's scripts and styles."""
    return _file(asset)
