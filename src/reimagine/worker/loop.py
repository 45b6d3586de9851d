"""The job loop: claim a job, run `generate` on it under a lease, store the image, complete the job.

One `Worker` runs one job at a time on one device. It is embedded (`worker/embedded.py`: spawned by `reimagine
serve`, talking to it over a pipe for instant wake-ups) or standalone (`worker/standalone.py`: `reimagine worker`,
polling the store). Torch is imported only
by the real `generate`, so a worker with a fake `generate` starts in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from PIL import Image

from reimagine.config import Settings
from reimagine.errors import InputError, JobCancelled, OutOfMemory
from reimagine.generation import BatchGenerate, Controls, Generate, Generated, Hooks, batch_key
from reimagine.jobs import ErrorType
from reimagine.queue.models import EventKind, FileRow, Job, LeaseState, Outcome
from reimagine.queue.store import JobStore
from reimagine.schemas import CONTENT_TYPES, ImageFile, OutputFormat, ReimagineInput, ReimagineOutput
from reimagine.storage import Storage, new_key
from reimagine.worker.messages import JobDone, JobEvent, WorkerMessage

logger = logging.getLogger(__name__)

_EVENT = JobEvent()


class LeaseLost(Exception):
    """Another worker owns the job now (our lease expired); drop it without completing."""


class Drained(Exception):
    """The worker is draining and the job could not finish within the grace period: give it back."""


#: Seconds of the drain grace period a worker keeps for itself: the running job is given back this long before
#: `serve` would kill the worker, so that giving it back (one write) always happens.
DRAIN_MARGIN_S = 2.0


def drain_deadline_s(settings: Settings) -> float:
    """Seconds after SIGTERM at which a worker gives its unfinished job back."""
    return max(0.0, settings.drain_grace_s - DRAIN_MARGIN_S)


def make_owner() -> str:
    """A lease owner id: host and pid let `serve` tell a dead local worker from a live one."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        storage: Storage,
        generate: Generate,
        *,
        owner: str | None = None,
        notify: Callable[[WorkerMessage], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.generate = generate
        self.owner = owner or make_owner()
        self._notify = notify or (lambda _message: None)
        self._beat = _Heartbeat(store, settings)
        #: per running job: the files recorded with its completion, and the bytes of the files it wrote (its usage)
        self._files: dict[str, list[FileRow]] = {}
        self._output_bytes: dict[str, int] = {}
        #: `Settings.batch_requests` > 1 and a `generate` that batches: two compatible waiting jobs share a batch
        self._batch = generate if settings.batch_requests > 1 and isinstance(generate, BatchGenerate) else None
        if settings.batch_requests > 1 and self._batch is None:
            logger.warning("batch_requests=%s: this generate cannot batch; one job at a time", settings.batch_requests)
        self._partner_beat: _Heartbeat | None = None
        self._stop = threading.Event()
        #: when this worker first saw its drain begin (monotonic); the grace period runs from then
        self._drain_seen: float | None = None

    def drain_overdue(self) -> bool:
        """Draining, and past the grace period: the running job must be given back now."""
        if not self._stop.is_set():
            return False
        if self._drain_seen is None:
            self._drain_seen = time.monotonic()
        return time.monotonic() - self._drain_seen >= drain_deadline_s(self.settings)

    def run(self, stop: threading.Event, wait: Callable[[float], None]) -> None:
        """Run jobs until `stop` is set; between jobs, `wait(timeout)` returns early when woken.

        `stop` is the drain: once set, no job is claimed; the running one has `drain_deadline_s` to finish (checked
        at each denoising step), else it goes back to the queue without counting an attempt.
        """
        self._stop = stop
        job: Job | None = None
        #: the completing write of the last job just found the queue empty: no need to look again before waiting
        #: (work queued since then wakes the wait at once)
        looked = False
        while not stop.is_set():
            if job is None:
                job = None if looked else self.store.claim(self.owner, self.settings.lease_s)
                if job is None:
                    looked = False
                    wait(1.0)
                    continue
                self._notify(_EVENT)
            partner = self._claim_partner() if self._batch is not None else None
            if partner is None:
                job, looked = self._run(job, then_claim=not stop.is_set())
            else:
                job, looked = self._run_pair([job, partner], then_claim=not stop.is_set())
        if job is not None:
            # Claimed with the previous job's completion just as a drain began, and not started: given back.
            self.store.requeue(job.id, job.fence)
            self._notify(_EVENT)

    def _run(self, job: Job, *, then_claim: bool) -> tuple[Job | None, bool]:
        """Run a claimed job and record its outcome; with `then_claim`, claim the next job in the same write.

        Returns the next job, if one was claimed, and whether the queue was looked at.
        """
        logger.info("job started", extra={"request_id": job.id, "attempt": job.attempts})
        self._beat.hold(job)
        self._files, self._output_bytes = {job.id: []}, {job.id: 0}
        try:
            outcome = self._execute(job, self._beat)
        except LeaseLost:
            logger.warning("lease lost; dropping job", extra={"request_id": job.id})
            return None, False
        except Drained:
            # A graceful shutdown is not the job's fault: back to the queue, the attempt undone, never poisoned.
            if self.store.requeue(job.id, job.fence):
                self.store.add_log(job.id, "Given back to the queue: the worker is shutting down", "WARN")
                logger.info("job given back (drain)", extra={"request_id": job.id})
            self._notify(JobDone(webhook_due=False))
            return None, False
        finally:
            self._beat.release()
        claimed = None
        if then_claim:
            finished, claimed = self.store.complete_and_claim(
                job.id, job.fence, outcome, files=self._files[job.id], owner=self.owner, lease_s=self.settings.lease_s
            )
        else:
            finished = self.store.complete(job.id, job.fence, outcome, files=self._files[job.id])
        if finished:
            logger.info("job finished", extra={"request_id": job.id, "status": outcome.status.value})
        else:
            logger.warning("lease lost before completion; result dropped", extra={"request_id": job.id})
        # Only a job with a webhook has an outbox row for serve to deliver now; the rest need no outbox read. The
        # message also covers the next job's start, written in the same transaction.
        self._notify(JobDone(webhook_due=bool(job.webhook_url)))
        return claimed, then_claim

    def _claim_partner(self) -> Job | None:
        """A second waiting job to run with the one in hand (`Settings.batch_requests`), if there is one."""
        partner = self.store.claim(self.owner, self.settings.lease_s)
        if partner is not None:
            self._notify(_EVENT)
        return partner

    def _run_pair(self, jobs: list[Job], *, then_claim: bool) -> tuple[Job | None, bool]:
        """Two claimed jobs: one denoising batch when compatible (`batch_key`), else one after the other, the second
        one's lease renewed meanwhile; each completes on its own (the last one claiming the next job, as `_run`).

        A lost lease or an overdue drain during a batch stops both: a job whose lease is lost is dropped, the
        other one goes back to the queue with its attempt undone.
        """
        if self._partner_beat is None:
            self._partner_beat = _Heartbeat(self.store, self.settings)
        beats = [self._beat, self._partner_beat]
        hooks = [_JobHooks(self, job, beat) for job, beat in zip(jobs, beats, strict=True)]
        for job, beat in zip(jobs, beats, strict=True):
            logger.info("job started (pair)", extra={"request_id": job.id, "attempt": job.attempts})
            beat.hold(job)
        self._files = {job.id: [] for job in jobs}
        self._output_bytes = {job.id: 0 for job in jobs}
        try:
            outcomes = self._execute_pair(jobs, hooks)
        except (LeaseLost, Drained):
            for job, beat in zip(jobs, beats, strict=True):
                if beat.state == LeaseState.LOST:
                    logger.warning("lease lost; dropping job", extra={"request_id": job.id})
                elif self.store.requeue(job.id, job.fence):
                    self.store.add_log(job.id, "Given back to the queue: its batch was stopped", "WARN")
            self._notify(JobDone(webhook_due=False))
            return None, False
        finally:
            for beat, job_hooks in zip(beats, hooks, strict=True):
                beat.release()
                job_hooks.drop_preview()
        claimed = None
        for job, outcome in zip(jobs, outcomes, strict=True):
            files = self._files[job.id]
            if job is jobs[-1] and then_claim:
                finished, claimed = self.store.complete_and_claim(
                    job.id, job.fence, outcome, files=files, owner=self.owner, lease_s=self.settings.lease_s
                )
            else:
                finished = self.store.complete(job.id, job.fence, outcome, files=files)
            if finished:
                logger.info("job finished", extra={"request_id": job.id, "status": outcome.status.value})
            else:
                logger.warning("lease lost before completion; result dropped", extra={"request_id": job.id})
            self._notify(JobDone(webhook_due=bool(job.webhook_url)))
        return claimed, then_claim

    def _execute_pair(self, jobs: list[Job], hooks: list[_JobHooks]) -> list[Outcome]:
        assert self._batch is not None
        started, cpu_started = time.monotonic(), time.process_time()
        loaded: list[tuple[ReimagineInput, Controls] | Outcome] = []
        for job, job_hooks in zip(jobs, hooks, strict=True):
            try:
                loaded.append(self._load(job, job_hooks))
            except Exception as exc:
                loaded.append(self._failed(job, job_hooks, exc))
        requests = [item for item in loaded if not isinstance(item, Outcome)]
        if len(requests) < 2 or batch_key(*requests[0]) != batch_key(*requests[1]):
            return [
                item if isinstance(item, Outcome) else self._execute_with(job, job_hooks, item)
                for job, job_hooks, item in zip(jobs, hooks, loaded, strict=True)
            ]
        batch: list[tuple[ReimagineInput, Controls, Hooks]] = [
            (inputs, controls, job_hooks) for (inputs, controls), job_hooks in zip(requests, hooks, strict=True)
        ]
        results = self._batch.batch(batch)
        outcomes = []
        for job, job_hooks, (inputs, _), result in zip(jobs, hooks, requests, results, strict=True):
            job_hooks.log("generated in one batch with another request of the same size and steps")
            try:
                if isinstance(result, Exception):
                    raise result
                outcomes.append(self._finish(job, job_hooks, inputs, result, started, cpu_started))
            except Exception as exc:
                outcomes.append(self._failed(job, job_hooks, exc))
        return outcomes

    def _execute(self, job: Job, beat: _Heartbeat) -> Outcome:
        hooks = _JobHooks(self, job, beat)
        try:
            return self._execute_with(job, hooks)
        finally:
            # A finished job's previews have served their purpose: the result replaces them.
            hooks.drop_preview()

    def _execute_with(
        self, job: Job, hooks: _JobHooks, loaded: tuple[ReimagineInput, Controls] | None = None
    ) -> Outcome:
        started = time.monotonic()
        cpu_started = time.process_time()
        try:
            inputs, controls = loaded or self._load(job, hooks)
            generated = self.generate(inputs, controls, hooks)
            return self._finish(job, hooks, inputs, generated, started, cpu_started)
        except Exception as exc:
            return self._failed(job, hooks, exc)

    def _load(self, job: Job, hooks: _JobHooks) -> tuple[ReimagineInput, Controls]:
        started = time.monotonic()
        inputs = ReimagineInput.model_validate(job.input)
        controls = self._load_controls(job, inputs)
        hooks.timings["inputs"] = time.monotonic() - started
        return inputs, controls

    def _finish(
        self,
        job: Job,
        hooks: _JobHooks,
        inputs: ReimagineInput,
        generated: Generated,
        started: float,
        cpu_started: float,
    ) -> Outcome:
        hooks.check_cancelled()
        body = self._store_result(job, inputs, generated, hooks.timings, cpu_started)
        return Outcome.succeeded(
            body,
            inference_time_s=round(time.monotonic() - started, 4),
            gpu_s=generated.timings.get("denoise"),
            output_bytes=self._output_bytes[job.id],
        )

    def _failed(self, job: Job, hooks: _JobHooks, exc: Exception) -> Outcome:
        """The outcome of a job that raised `exc`; a lost lease or an overdue drain is re-raised (no outcome)."""
        if isinstance(exc, (LeaseLost, Drained)):
            raise exc
        if isinstance(exc, JobCancelled):
            return Outcome.cancelled()
        if isinstance(exc, InputError):
            return Outcome.failed(ErrorType.VALIDATION_ERROR, exc.message, detail=exc.detail())
        if isinstance(exc, OutOfMemory) or type(exc).__name__ == "OutOfMemoryError":
            _free_accelerator_memory()
            outcome = Outcome.out_of_memory()
        else:
            logger.error("generate failed", exc_info=exc, extra={"request_id": job.id})
            outcome = Outcome.internal(exc)
        hooks.log(outcome.error or "", "ERROR")
        return outcome

    def _load_controls(self, job: Job, inputs: ReimagineInput) -> Controls:
        from reimagine.images import load_image

        own = [url for url in (job.base_url, self.settings.public_base_url) if url]
        loaded: dict[str, Image.Image | None] = {}
        for name in ("depth", "canny"):
            url = getattr(inputs, f"{name}_image_url")
            loaded[name] = (
                load_image(url, f"{name}_image_url", settings=self.settings, storage=self.storage, own_base_urls=own)
                if url
                else None
            )
        return Controls(depth=loaded["depth"], canny=loaded["canny"])

    def _put_png(self, job: Job, image: Image.Image, kind: str, *, key: str | None = None) -> str:
        """Store a PNG (a preview or a derived map) as a file of the job; under its content key unless `key`."""
        from reimagine.images import encode_png

        data = encode_png(image)
        stored = self.storage.put(data, "image/png", f"{kind}.png", key=key or _job_file_key(job, data, "image/png"))
        self.store.add_file(stored.key, job_id=job.id, kind=kind, content_type="image/png", size=len(data))
        self._output_bytes[job.id] = self._output_bytes.get(job.id, 0) + len(data)
        return str(stored.key)

    def _store_result(
        self, job: Job, inputs: ReimagineInput, generated: Generated, timings: dict[str, float], cpu_started: float
    ) -> dict[str, Any]:
        """The result body, its image (and the derived maps) stored. `timings`: the worker's own phases, reported
        next to `generate`'s (bench/serve_gpu.py reads them): `inputs` (fetching and decoding the structure images),
        `progress` (step events and preview PNGs, stored), `output` (maps and result encoded and stored), `cpu`
        (CPU seconds of the worker process over the job, all threads, the GPU's kernel launches included)."""
        from reimagine.images import data_uri, encode_image

        started = time.monotonic()
        if generated.maps:
            keys = {name: self._put_png(job, image, f"{name}_map") for name, image in generated.maps.items()}
            self.store.add_event(job.id, EventKind.MAPS, {"keys": keys})
            self._notify(_EVENT)
        image = generated.image
        output_format = OutputFormat(inputs.output_format)
        content_type = CONTENT_TYPES[output_format]
        data = encode_image(image, output_format.value, inputs.output_quality)
        if inputs.sync_mode:
            # sync_mode: the image travels in the response only; nothing is stored.
            url = data_uri(data, content_type)
        else:
            key = _job_file_key(job, data, content_type)
            stored = self.storage.put(data, content_type, f"image.{output_format.value}", key=key)
            self._output_bytes[job.id] += len(data)
            # Recorded in the job's completing transaction.
            self._files[job.id].append(FileRow(stored.key, "image", content_type, len(data)))
            url = f"{job.base_url}/files/{stored.key}"
        output = ReimagineOutput(
            image=ImageFile(
                url=url,
                content_type=content_type,
                file_name=f"reimagine-{job.id[:8]}.{output_format.value}",
                file_size=len(data),
                width=image.width,
                height=image.height,
            ),
            seed=inputs.seed,
            timings={
                **generated.timings,
                **{name: round(seconds, 4) for name, seconds in timings.items()},
                "output": round(time.monotonic() - started, 4),
                "cpu": round(time.process_time() - cpu_started, 4),
            },
        )
        return output.model_dump(mode="json")


def _job_file_key(job: Job, data: bytes, content_type: str) -> str:
    """A file's key: its content and its job, so that a re-run writes the same key, and two jobs with the same output
    own two files (deleting one request, or its lifecycle ending, never takes another's file)."""
    from reimagine.storage import extension_for

    return hashlib.sha256(job.id.encode() + data).hexdigest() + extension_for(content_type)


class _Heartbeat:
    """Renews the current job's lease every `heartbeat_s` from one long-lived thread; remembers a cancel or a loss."""

    def __init__(self, store: JobStore, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._job: Job | None = None
        self._lock = threading.Lock()
        self.state = LeaseState.HELD
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def hold(self, job: Job) -> None:
        with self._lock:
            self._job, self.state = job, LeaseState.HELD

    def release(self) -> None:
        with self._lock:
            self._job = None

    def _run(self) -> None:
        while True:
            time.sleep(self._settings.heartbeat_s)
            with self._lock:
                job = self._job
            if job is None:
                continue
            try:
                state = self._store.heartbeat(job.id, job.fence, self._settings.lease_s)
            except Exception:
                logger.exception("heartbeat failed; retrying", extra={"request_id": job.id})
                continue
            with self._lock:
                if self._job is job:
                    self.state = state


class _JobHooks:
    """The `Hooks` a job's `generate` gets: progress events, throttled previews, cancel checks, logs."""

    def __init__(self, worker: Worker, job: Job, beat: _Heartbeat) -> None:
        self._worker = worker
        self._job = job
        self._beat = beat
        self._last_preview = 0.0
        #: the job's only stored preview: each new one replaces it (a 20-step job used to keep 20 PNGs)
        self._preview_key: str | None = None
        #: the worker's own phases of this job, in seconds (reported in the result's `timings`)
        self.timings: dict[str, float] = {"progress": 0.0}

    def wants_preview(self, step: int, total: int) -> bool:
        """A preview at most every `preview_interval_s`, and of the last step: the rest are never computed."""
        now = time.time()
        if now - self._last_preview >= self._worker.settings.preview_interval_s or step == total:
            self._last_preview = now
            return True
        return False

    def on_step(self, step: int, total: int, preview: Image.Image | None) -> None:
        started = time.monotonic()
        self._on_step(step, total, preview)
        self.timings["progress"] += time.monotonic() - started

    def _on_step(self, step: int, total: int, preview: Image.Image | None) -> None:
        now = time.time()
        data: dict[str, Any] = {
            "step": step,
            "total": total,
            "message": f"Step {step}/{total}",
            "level": "INFO",
            "timestamp": datetime.fromtimestamp(now, UTC).isoformat(),
        }
        if preview is not None:
            # A random key, not the content's: two jobs with the same preview must not delete each other's.
            key = self._worker._put_png(self._job, preview, "preview", key=new_key("image/png"))
            data["preview_key"] = key
        self._worker.store.add_event(self._job.id, EventKind.PROGRESS, data)
        self._worker._notify(_EVENT)
        if "preview_key" in data:
            self.drop_preview()  # the previous one, now that the event names the new one
            self._preview_key = data["preview_key"]

    def drop_preview(self) -> None:
        """Delete the stored preview, if any (best effort: the retention sweep removes what is left)."""
        key, self._preview_key = self._preview_key, None
        if key is None:
            return
        try:
            self._worker.storage.delete(key)
            self._worker.store.remove_file(key)
        except Exception:
            logger.warning("could not delete preview %s", key, exc_info=True, extra={"request_id": self._job.id})

    def check_cancelled(self) -> None:
        if self._worker.drain_overdue():
            raise Drained
        state = self._beat.state
        if state == LeaseState.HELD:
            state = self._worker.store.lease_state(self._job.id, self._job.fence)
        if state == LeaseState.LOST:
            raise LeaseLost
        if state == LeaseState.CANCEL:
            raise JobCancelled

    def log(self, message: str, level: str = "INFO") -> None:
        self._worker.store.add_log(self._job.id, message, level)
        self._worker._notify(_EVENT)


def _free_accelerator_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_generate(settings: Settings, log: Callable[[str], None] = logger.info) -> Generate:
    """The `generate` callable `settings` asks for: a factory by import path, or the Bria pipeline, warmed."""
    if settings.generate:
        import importlib

        module_name, _, attr = settings.generate.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        generate: Generate = factory(settings)
        return generate
    from reimagine.worker.pipeline import PipelineGenerate, load_pipeline, warmup

    started = time.monotonic()
    pipe = load_pipeline(settings)
    log(f"model loaded in {time.monotonic() - started:.1f}s; warming up")
    buckets = warmup(pipe)
    warmed = ", ".join(f"{size} {seconds:.1f}s" for size, seconds in buckets.items())
    log(f"model ready after {time.monotonic() - started:.1f}s" + (f" (compiled: {warmed})" if warmed else ""))
    return PipelineGenerate(pipe)


def install_drain_handler(stop: threading.Event) -> None:
    """SIGTERM/SIGINT: finish the current job, take no new one."""

    def drain(signum: int, _frame: object) -> None:
        logger.info("signal %s: draining (finishing the current job, taking no new one)", signum)
        stop.set()

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
