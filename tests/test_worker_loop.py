"""The worker's loop on a real SQLite store: back-to-back jobs, and what a drain leaves behind."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from reimagine.config import Settings
from reimagine.generation import Controls, Generated, Hooks
from reimagine.jobs import JobStatus
from reimagine.queue import JobStore, open_store
from reimagine.schemas import ReimagineInput
from reimagine.storage.local import LocalStorage
from reimagine.worker.loop import Worker
from tests.conftest import new_job


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    opened = open_store(settings.resolved_database_url)
    yield opened
    opened.close()


def _worker(settings: Settings, store: Any, generate: Any) -> Worker:
    return Worker(settings, store, LocalStorage(settings.files_dir), generate)


def _image(inputs: ReimagineInput, controls: Controls, hooks: Hooks) -> Generated:
    return Generated(image=Image.new("RGB", (8, 8)), prompt=inputs.prompt)


def _statuses(store: JobStore, job_id: str) -> list[str]:
    return [e.data["status"] for e in store.events(job_id) if e.kind == "status"]


def test_a_busy_worker_runs_the_queue_back_to_back_and_stops_when_told(settings: Settings, store: JobStore) -> None:
    ids = [store.enqueue(new_job())[0].id for _ in range(4)]
    stop = threading.Event()
    waits: list[float] = []

    def wait(timeout: float) -> None:
        # Asked only once the queue is empty.
        waits.append(timeout)
        stop.set()

    _worker(settings, store, _image).run(stop, wait)
    for job_id in ids:
        job = store.get(job_id)
        assert job is not None and job.status == JobStatus.SUCCEEDED and job.attempts == 1
        assert _statuses(store, job_id) == ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert len(waits) == 1


def test_a_drain_during_a_job_finishes_it_and_takes_no_other(settings: Settings, store: JobStore) -> None:
    first, second = (store.enqueue(new_job())[0].id for _ in range(2))
    stop = threading.Event()

    def generate(inputs: ReimagineInput, controls: Controls, hooks: Hooks) -> Generated:
        stop.set()  # SIGTERM while the first job runs
        return _image(inputs, controls, hooks)

    _worker(settings, store, generate).run(stop, lambda _timeout: None)
    done, waiting = store.get(first), store.get(second)
    assert done is not None and done.status == JobStatus.SUCCEEDED
    assert waiting is not None and waiting.status == JobStatus.QUEUED and waiting.attempts == 0


def test_a_job_claimed_as_a_drain_began_is_given_back_unstarted(settings: Settings, store: JobStore) -> None:
    first, second = (store.enqueue(new_job())[0].id for _ in range(2))
    stop = threading.Event()
    started: list[str] = []

    class DrainAfterCompletion:
        """The real store; the drain signal lands between the completing write and the next job's start."""

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def complete_and_claim(self, *args: Any, **kwargs: Any) -> Any:
            result = store.complete_and_claim(*args, **kwargs)
            stop.set()
            return result

    def generate(inputs: ReimagineInput, controls: Controls, hooks: Hooks) -> Generated:
        started.append(inputs.prompt)
        return _image(inputs, controls, hooks)

    _worker(settings, DrainAfterCompletion(), generate).run(stop, lambda _timeout: None)
    assert len(started) == 1
    done, returned = store.get(first), store.get(second)
    assert done is not None and done.status == JobStatus.SUCCEEDED
    assert returned is not None and returned.status == JobStatus.QUEUED and returned.lease_owner is None
    assert returned.attempts == 0, "an attempt that never started does not count towards poisoning"
    assert _statuses(store, second) == ["QUEUED", "RUNNING", "QUEUED"]


def _stored_previews(settings: Settings) -> list[Path]:
    return [p for p in settings.files_dir.rglob("*.png") if ".uploads" not in p.parts]


def test_only_the_latest_preview_is_kept_and_none_once_the_job_ends(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, preview_interval_s=0)
    store = open_store(settings.resolved_database_url)
    job_id = store.enqueue(new_job())[0].id
    seen: list[int] = []

    def generate(inputs: ReimagineInput, controls: Controls, hooks: Hooks) -> Generated:
        for step in range(1, 6):
            hooks.on_step(step, 5, Image.new("RGB", (16, 16), (step * 40, 0, 0)))
            seen.append(len(_stored_previews(settings)))
        return Generated(image=Image.new("RGB", (8, 8)), prompt=inputs.prompt)

    stop = threading.Event()
    _worker(settings, store, generate).run(stop, lambda _timeout: stop.set())
    store.close()
    assert seen == [1, 1, 1, 1, 1], "each preview replaces the previous one"
    previews = [
        e.data["preview_key"]
        for e in open_store(settings.resolved_database_url).events(job_id)
        if "preview_key" in e.data
    ]
    assert len(set(previews)) == 5
    remaining = _stored_previews(settings)
    assert len(remaining) == 1 and remaining[0].name not in previews, "only the result is left"


class _Batching:
    """A `BatchGenerate` fake that records how it was called: one request at a time, or batches."""

    def __init__(self) -> None:
        self.singles: list[str] = []
        self.batches: list[list[str]] = []

    def __call__(self, inputs: ReimagineInput, controls: Controls, hooks: Hooks) -> Generated:
        self.singles.append(inputs.prompt)
        return _image(inputs, controls, hooks)

    def batch(self, requests: list[tuple[ReimagineInput, Controls, Hooks]]) -> list[Generated | Exception]:
        self.batches.append([inputs.prompt for inputs, _, _ in requests])
        return [_image(*request) for request in requests]


def _enqueue(store: JobStore, **fields: Any) -> str:
    job = new_job()
    job.input.update(fields)
    return store.enqueue(job)[0].id


def _run_until_idle(settings: Settings, store: JobStore, generate: Any) -> None:
    stop = threading.Event()
    _worker(settings, store, generate).run(stop, lambda _timeout: stop.set())


def test_two_compatible_waiting_jobs_share_one_batch(tmp_path: Path, store: JobStore) -> None:
    ids = [_enqueue(store, prompt=prompt, seed=seed) for prompt, seed in (("a cat", 1), ("a dog", 2))]
    generate = _Batching()
    _run_until_idle(Settings(data_dir=tmp_path, batch_requests=2), store, generate)
    assert generate.batches == [["a cat", "a dog"]] and generate.singles == []
    for job_id in ids:
        job = store.get(job_id)
        assert job is not None and job.status == JobStatus.SUCCEEDED and job.attempts == 1
        assert any("one batch" in e.data.get("message", "") for e in store.events(job_id) if e.kind == "log")


def test_incompatible_jobs_claimed_together_run_one_after_the_other(tmp_path: Path, store: JobStore) -> None:
    ids = [_enqueue(store, prompt="square"), _enqueue(store, prompt="wide", aspect_ratio="16:9")]
    generate = _Batching()
    _run_until_idle(Settings(data_dir=tmp_path, batch_requests=2), store, generate)
    assert generate.batches == [] and generate.singles == ["square", "wide"]
    for job_id in ids:
        job = store.get(job_id)
        assert job is not None and job.status == JobStatus.SUCCEEDED and job.attempts == 1


def test_batching_is_off_by_default(settings: Settings, store: JobStore) -> None:
    for prompt in ("a cat", "a dog"):
        _enqueue(store, prompt=prompt)
    generate = _Batching()
    _run_until_idle(settings, store, generate)
    assert generate.batches == [] and generate.singles == ["a cat", "a dog"]


def test_a_request_cancelled_in_a_batch_ends_cancelled_and_the_other_succeeds(tmp_path: Path, store: JobStore) -> None:
    from reimagine.errors import JobCancelled

    ids = [_enqueue(store, prompt=prompt) for prompt in ("a cat", "a dog")]

    class CancelFirst(_Batching):
        def batch(self, requests: list[tuple[ReimagineInput, Controls, Hooks]]) -> list[Generated | Exception]:
            return [JobCancelled(), _image(*requests[1])]

    _run_until_idle(Settings(data_dir=tmp_path, batch_requests=2), store, CancelFirst())
    cancelled, done = (store.get(job_id) for job_id in ids)
    assert cancelled is not None and cancelled.status == JobStatus.CANCELED
    assert done is not None and done.status == JobStatus.SUCCEEDED
