"""The HTTP application: `create_app(settings)` wires the store, storage, event hub, workers and background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from reimagine import ENDPOINT_ID, __version__
from reimagine.api import maintenance
from reimagine.api.auth import KeyCache, open_access
from reimagine.api.enqueuer import Enqueuer
from reimagine.api.hub import EventHub
from reimagine.api.state import AppState, Workers
from reimagine.config import Settings
from reimagine.errors import ModelMissing, StorageUnavailable
from reimagine.jobs import ErrorType
from reimagine.queue.models import JobResult
from reimagine.queue.store import JobStore
from reimagine.schemas import ImageFile, QueueStatus, ReimagineInput, ReimagineOutput
from reimagine.storage import Storage

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    *,
    store: JobStore | None = None,
    storage: Storage | None = None,
    supervisor: Workers | None = None,
) -> FastAPI:
    """Build the app. Collaborators default to the ones `settings` describe; tests may pass their own.

    `supervisor` runs the worker processes; by default one is made when `settings.workers != 0`.
    """
    from reimagine.fetcher import check_url
    from reimagine.limits import RateLimiter
    from reimagine.metrics import Metrics
    from reimagine.queue import open_store
    from reimagine.storage import open_storage
    from reimagine.webhooks import WebhookDispatcher, WebhookKey

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = (
        store if store is not None else open_store(settings.resolved_database_url, max_attempts=settings.max_attempts)
    )
    storage = storage if storage is not None else open_storage(settings)
    if supervisor is None and settings.workers != 0:
        from reimagine.worker.supervisor import Supervisor

        supervisor = Supervisor(settings)
    webhook_key = WebhookKey.load_or_create(settings)
    metrics = Metrics(store)

    def observe_finished(job: JobResult) -> None:
        # The hub read the finished job (in its tail's thread). Every replica sees every job, so with several
        # replicas aggregate these series with max(), not sum().
        metrics.observe_job(job)

    hub = EventHub(store, on_terminal=observe_finished)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dispatcher = WebhookDispatcher(
            store.outbox, settings, webhook_key, check_target=lambda url: check_url(url, settings), metrics=metrics
        )
        tasks = [
            asyncio.create_task(hub.run(), name="event-hub"),
            asyncio.create_task(dispatcher.run(), name="webhooks"),
            asyncio.create_task(maintenance.reap(store, settings), name="reaper"),
            asyncio.create_task(maintenance.sweep(store, storage, settings), name="retention"),
            asyncio.create_task(maintenance.expire_files(store, storage), name="file-lifecycles"),
        ]
        if store.db.is_sqlite:
            tasks.append(asyncio.create_task(maintenance.checkpoint(store), name="checkpoint"))
        loop = asyncio.get_running_loop()
        if supervisor is not None:
            await asyncio.to_thread(supervisor.start, on_event=hub.kick, on_webhook_due=dispatcher.kick, loop=loop)

        if supervisor is not None:
            # From the SIGTERM handler: the supervisor is told on the loop (it takes locks).
            state.on_drain = lambda: loop.call_soon_threadsafe(supervisor.begin_drain)
        # --- scale-out: PostgreSQL NOTIFY from other replicas and remote workers (no-op on SQLite) -------------
        from reimagine.queue.notify import KEYS, QUEUED, open_listener

        def on_notify(payload: str) -> None:
            if payload == KEYS:
                if isinstance(keys, KeyCache):
                    keys.clear()  # a key was revoked on some replica, or notifications were lost
                return
            hub.kick()  # progress, logs, cancels and results of jobs run anywhere reach this replica's streams
            if payload == QUEUED:
                state.notify_workers()  # a job submitted on another replica: wake our idle embedded workers

        listener = open_listener(store.database_url, on_notify)
        if isinstance(keys, KeyCache):
            # Cached keys are trusted only while revocations can reach this replica.
            keys.is_fresh = lambda: listener.is_live
        # --- end scale-out ---------------------------------------------------------------------------------------
        try:
            yield
        finally:
            listener.stop()
            if supervisor is not None:
                await asyncio.to_thread(supervisor.stop)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="reimagine",
        version=__version__,
        summary=f"Self-hosted, fal.ai-compatible `{ENDPOINT_ID}`",
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(StorageUnavailable, _storage_unavailable)
    # SQLite: every request reads its key (on the event loop; tens of microseconds), so a revocation by
    # `reimagine keys revoke` applies to the next request. PostgreSQL: cached while LISTEN is up (see api/auth.py).
    keys = (
        KeyCache(store.keys.verify, ttl_s=0.0, inline=True)
        if store.reads_inline
        else KeyCache(store.keys.verify, is_fresh=lambda: False)
    )
    state = AppState(
        settings=settings,
        store=store,
        storage=storage,
        enqueuer=Enqueuer(store, max_queued=settings.max_queue_depth),
        hub=hub,
        metrics=metrics,
        webhook_key=webhook_key,
        limiter=RateLimiter(settings),
        authenticate=keys if settings.auth else open_access,
        check_url=lambda url: check_url(url, settings),
        check_prompt=_prompt_checker(settings),
        workers=supervisor,
    )
    app.state.reimagine = state

    from reimagine.api.fastlane import FastLane

    # Added first, so that it runs inside the CORS layer below (middleware added later wraps what came before).
    app.add_middleware(FastLane)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["x-fal-request-id", "x-fal-error-type", "x-fal-request-timeout-type", "retry-after"],
            max_age=600,
        )

    from reimagine.api.routes import health, playground, proxy, queue, requests, run, wellknown
    from reimagine.api.routes import storage as storage_routes

    # Routes are matched in this order: the hot ones first (the run router is short, the queue router long).
    app.include_router(run.router)
    app.include_router(queue.router)
    app.include_router(requests.router)
    app.include_router(storage_routes.router)
    app.include_router(health.router)
    app.include_router(wellknown.router)
    app.include_router(proxy.router)
    app.include_router(playground.router)
    app.include_router(playground.api_router)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app


async def _client_gone(_request: Request, _exc: Exception) -> Response:
    # The caller went away while sending its body (or sent less than its Content-Length): nobody reads this
    # answer, and it is not a server error to log with a traceback.
    return Response(status_code=400)


async def _storage_unavailable(_request: Request, exc: Exception) -> Response:
    logger.error("storage unavailable: %s", exc)
    return JSONResponse(
        {"detail": str(exc), "error_type": ErrorType.STORAGE_UNAVAILABLE},
        status_code=503,
        headers={"x-fal-error-type": ErrorType.STORAGE_UNAVAILABLE},
    )


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """OpenAPI with the input and output schemas as named components (the playground builds its form from them)."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        from reimagine.api.routes.storage import CompleteUpload, InitiateUpload

        # The storage routes parse their JSON bodies after authentication: their schemas are added here.
        for model in (ReimagineInput, ReimagineOutput, ImageFile, QueueStatus, InitiateUpload, CompleteUpload):
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in definition.pop("$defs", {}).items():
                components.setdefault(name, sub)
            components[model.__name__] = definition
        schema["x-fal-endpoint"] = ENDPOINT_ID
        from reimagine.api.openapi import describe

        schema = describe(schema)
        app.openapi_schema = schema
        return schema

    return build


def _prompt_checker(settings: Settings) -> Callable[[ReimagineInput], None]:
    """The API-side prompt length check (no torch): only when the worker would not rewrite the prompt first.

    The tokenizer loads in a background thread from start-up: fetching it from the Hub can take seconds (or time
    out offline), and a request must never wait for that. Until it is there, and if it cannot be had, the worker
    checks the length and answers 422 as the job's result.
    """
    from reimagine.prompt import check_prompt_length, load_tokenizer

    tokenizer: list[Any] = []

    def load() -> None:
        try:
            tokenizer.append(load_tokenizer(settings))
        except ModelMissing:
            logger.warning("tokenizer not available to the API; prompt length is checked by the worker")

    threading.Thread(target=load, name="tokenizer-load", daemon=True).start()

    def check(inputs: ReimagineInput) -> None:
        if inputs.truncate_prompt or (inputs.prompt_enhancer and settings.enhancer != "off"):
            return
        if tokenizer:
            check_prompt_length(tokenizer[0], inputs)

    return check
