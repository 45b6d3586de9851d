"""FastAPI dependency aliases: the app's collaborators live on `app.state`, set once by `create_app`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from reimagine.config import Settings


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _store(request: Request) -> Any:
    return request.app.state.store


def _storage(request: Request) -> Any:
    return request.app.state.storage


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[Any, Depends(_store)]
StorageDep = Annotated[Any, Depends(_storage)]
