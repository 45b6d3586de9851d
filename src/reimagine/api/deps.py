"""FastAPI dependency aliases: the app's collaborators live on `app.state`, set once by `create_app`.

They are `async` only so that FastAPI calls them on the event loop instead of hopping to a worker thread.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from reimagine.config import Settings


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _store(request: Request) -> Any:
    return request.app.state.store


async def _storage(request: Request) -> Any:
    return request.app.state.storage


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[Any, Depends(_store)]
StorageDep = Annotated[Any, Depends(_storage)]
