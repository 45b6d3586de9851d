"""The HTTP application: `create_app(settings)` wires the store, storage, event hub, workers and background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from reimagine import ENDPOINT_ID, __version__
from reimagine.api.auth import KeyCache, open_access
from reimagine.api.enqueuer import Enqueuer
from reimagine.api.hub import EventHub
from reimagine.config import Settings
from reimagine.errors import ModelMissing, StorageUnavailable
from reimagine.schemas import ImageFile, QueueStatus, ReimagineInput, ReimagineOutput

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    *,
    store: Any = None,
    storage: Any = None,
    supervisor: Any = None,
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

    def observe_finished(job: Any) -> None:
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
            asyncio.create_task(_reap(store, settings), name="reaper"),
            asyncio.create_task(_sweep(store, storage, settings), name="retention"),
            asyncio.create_task(_expire_files(store, storage), name="file-lifecycles"),
        ]
        if store.db.is_sqlite:
            tasks.append(asyncio.create_task(_checkpoint(store), name="checkpoint"))
        loop = asyncio.get_running_loop()
        if supervisor is not None:
            await asyncio.to_thread(supervisor.start, on_event=hub.kick, on_webhook_due=dispatcher.kick, loop=loop)

        def begin_drain() -> None:
            # From the SIGTERM handler: flags only here; the supervisor is told on the loop (it takes locks).
            app.state.draining.set()
            if supervisor is not None:
                loop.call_soon_threadsafe(supervisor.begin_drain)

        app.state.begin_drain = begin_drain
        # --- scale-out: PostgreSQL NOTIFY from other replicas and remote workers (no-op on SQLite) -------------
        from reimagine.queue.notify import KEYS, QUEUED, open_listener

        def on_notify(payload: str) -> None:
            if payload == KEYS:
                if isinstance(keys, KeyCache):
                    keys.clear()  # a key was revoked on some replica, or notifications were lost
                return
            hub.kick()  # progress, logs, cancels and results of jobs run anywhere reach this replica's streams
            if payload == QUEUED:
                app.state.notify_workers()  # a job submitted on another replica: wake our idle embedded workers

        listener = open_listener(getattr(store, "database_url", settings.resolved_database_url), on_notify)
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
    app.state.settings = settings
    app.state.store = store
    app.state.enqueuer = Enqueuer(store, max_queued=settings.max_queue_depth)
    app.state.storage = storage
    app.state.hub = hub
    app.state.supervisor = supervisor
    app.state.metrics = metrics
    app.state.webhook_key = webhook_key
    app.state.limiter = RateLimiter(settings)
    # SQLite: every request reads its key (on the event loop; tens of microseconds), so a revocation by
    # `reimagine keys revoke` applies to the next request. PostgreSQL: cached while LISTEN is up (see api/auth.py).
    keys = (
        KeyCache(store.keys.verify, ttl_s=0.0, inline=True)
        if store.reads_inline
        else KeyCache(store.keys.verify, is_fresh=lambda: False)
    )
    app.state.authenticate = keys if settings.auth else open_access
    app.state.check_url = lambda url: check_url(url, settings)
    app.state.check_prompt = _prompt_checker(settings)
    app.state.notify_workers = supervisor.wake if supervisor is not None else (lambda: None)
    #: set on SIGTERM (api/serve.py): sync runs whose job will not run before the exit answer a retryable 503
    app.state.draining = threading.Event()
    app.state.begin_drain = app.state.draining.set
    app.state.unavailable = supervisor.unavailable if supervisor is not None else (lambda: None)

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

    from reimagine.api.routes import health, queue, requests, run, wellknown
    from reimagine.api.routes import storage as storage_routes

    # Routes are matched in this order: the hot ones first (the run router is short, the queue router long).
    app.include_router(run.router)
    app.include_router(queue.router)
    app.include_router(requests.router)
    app.include_router(storage_routes.router)
    app.include_router(health.router)
    app.include_router(wellknown.router)
    _extra_routers(app)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app


async def _client_gone(_request: Request, _exc: Exception) -> Response:
    # The caller went away while sending its body (or sent less than its Content-Length): nobody reads this
    # answer, and it is not a server error to log with a traceback.
    return Response(status_code=400)


async def _storage_unavailable(_request: Request, exc: Exception) -> Response:
    logger.error("storage unavailable: %s", exc)
    return JSONResponse(
        {"detail": str(exc), "error_type": "storage_unavailable"},
        status_code=503,
        headers={"x-fal-error-type": "storage_unavailable"},
    )


def _extra_routers(app: FastAPI) -> None:
    """Routers that other surfaces add (proxy, playground) once they exist."""
    import importlib

    for name in ("reimagine.api.routes.proxy", "reimagine.api.routes.playground"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        app.include_router(module.router)


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


async def _reap(store: Any, settings: Settings) -> None:
    """Take back jobs whose worker stopped renewing its lease (crashed, hung, partitioned)."""
    next_reclaim = 0.0
    while True:
        await asyncio.sleep(1.0)
        try:
            # Start deadlines are checked every second: a busy worker pool must not delay a user's 504.
            await asyncio.to_thread(store.expire_start_deadlines)
            if time.monotonic() >= next_reclaim:
                await asyncio.to_thread(store.reclaim, expired_before=time.time())
                next_reclaim = time.monotonic() + settings.lease_s / 3
        except Exception:
            logger.exception("lease reaper failed; retrying")


async def _checkpoint(store: Any) -> None:
    """SQLite: fold the write-ahead log back into the database file often, from a thread of its own.

    A checkpoint syncs the disk (milliseconds on a cloud volume). Left to SQLite, it runs inside whichever commit
    crosses the log's size limit, and the request behind that commit waits: every forty-odd jobs, one took several
    milliseconds longer. Checkpoints made here keep the log below that limit, so no request pays for one.
    """
    while True:
        await asyncio.sleep(0.25)
        try:
            await asyncio.to_thread(store.checkpoint)
        except Exception:
            logger.exception("checkpoint failed; retrying")


async def _expire_files(store: Any, storage: Any, every_s: float = 30.0) -> None:
    """Delete files whose own lifecycle ended (`X-Fal-Object-Lifecycle-Preference`); until then they answer 410."""
    while True:
        try:
            while keys := await asyncio.to_thread(store.expire_files):
                for key in keys:
                    await asyncio.to_thread(storage.delete, key)
        except Exception:
            logger.exception("file lifecycle sweep failed; retrying")
        await asyncio.sleep(every_s)


async def _sweep(store: Any, storage: Any, settings: Settings) -> None:
    """Delete finished jobs and their files after the retention period."""
    while True:
        try:
            keys = await asyncio.to_thread(store.delete_expired, time.time() - settings.result_retention_s)
            for key in keys:
                await asyncio.to_thread(storage.delete, key)
            # Uploads belong to no job; they expire by age alone.
            await asyncio.to_thread(storage.delete_older_than, settings.result_retention_s)
        except Exception:
            logger.exception("retention sweep failed; retrying")
        await asyncio.sleep(3600)
