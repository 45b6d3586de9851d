"""FastAPI dependency aliases for the app's collaborators (`api/state.py`).

They are `async` only so that FastAPI calls them on the event loop instead of hopping to a worker thread.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from reimagine.api.state import state_of
from reimagine.config import Settings
from reimagine.storage import Storage


async def _settings(request: Request) -> Settings:
    return state_of(request).settings


async def _storage(request: Request) -> Storage:
    return state_of(request).storage


SettingsDep = Annotated[Settings, Depends(_settings)]
StorageDep = Annotated[Storage, Depends(_storage)]
