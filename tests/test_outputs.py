"""What a finished job answers: the image in the asked format, and an `error_type` on every failure."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from reimagine.config import Settings
from reimagine.errors import InputError, JobCancelled, OutOfMemory
from reimagine.generation import Controls, Generated, Hooks
from reimagine.jobs import ErrorType, JobStatus
from reimagine.queue import JobStore, open_store
from reimagine.queue.models import Job, NewJob
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


def _photo(inputs: ReimagineInput, controls: Controls, hooks: Hooks) -> Generated:
    image = Image.effect_noise((64, 48), 60).convert("RGB")
    return Generated(image=image, prompt=inputs.prompt)


def _run(settings: Settings, store: JobStore, generate: Any, **fields: Any) -> tuple[Job, LocalStorage]:
    storage = LocalStorage(settings.files_dir)
    new = new_job()
    job = store.enqueue(NewJob(**{**new.__dict__, "input": {"prompt": "a cat", **fields}}))[0]
    stop = threading.Event()
    Worker(settings, store, storage, generate).run(stop, lambda _timeout: stop.set())
    done = store.get(job.id)
    assert done is not None
    return done, storage


@pytest.mark.parametrize(("output_format", "content_type", "pil_format"), [
    ("png", "image/png", "PNG"), ("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP"),
])  # fmt: skip
def test_output_format_sets_the_encoding_the_type_and_the_name(
    settings: Settings, store: JobStore, output_format: str, content_type: str, pil_format: str
) -> None:
    job, storage = _run(settings, store, _photo, output_format=output_format, output_quality=80)
    assert job.status == JobStatus.SUCCEEDED
    image = json.loads(job.result_body or "")["image"]
    assert image["content_type"] == content_type
    assert image["file_name"].endswith("." + output_format)
    stored, data = storage.get(image["url"].rsplit("/", 1)[1])
    assert stored.content_type == content_type and len(data) == image["file_size"]
    assert Image.open(io.BytesIO(data)).format == pil_format


def test_quality_trades_size_and_sync_mode_inlines_the_format(settings: Settings, store: JobStore) -> None:
    low, _ = _run(settings, store, _photo, output_format="jpeg", output_quality=10)
    high, _ = _run(settings, store, _photo, output_format="jpeg", output_quality=95)
    size = [json.loads(job.result_body or "")["image"]["file_size"] for job in (low, high)]
    assert size[0] < size[1]
    inline, _ = _run(settings, store, _photo, output_format="webp", sync_mode=True)
    url = json.loads(inline.result_body or "")["image"]["url"]
    assert url.startswith("data:image/webp;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).format == "WEBP"


def test_output_fields_are_validated_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="output_format"):
        ReimagineInput(prompt="x", output_format="gif")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="output_quality"):
        ReimagineInput(prompt="x", output_quality=0)
    assert ReimagineInput(prompt="x").output_format == "png"


def _raising(error: Exception) -> Any:
    def generate(inputs: ReimagineInput, controls: Controls, hooks: Hooks) -> Generated:
        raise error

    return generate


@pytest.mark.parametrize(("error", "status", "error_type"), [
    (RuntimeError("boom"), 500, ErrorType.INTERNAL_ERROR),
    (OutOfMemory("CUDA out of memory"), 503, ErrorType.OUT_OF_MEMORY),
    (JobCancelled(), 499, ErrorType.CANCELLED),
    (InputError("depth_image_url", "unreadable"), 422, ErrorType.VALIDATION_ERROR),
])  # fmt: skip
def test_every_failure_carries_its_error_type(
    settings: Settings, store: JobStore, error: Exception, status: int, error_type: ErrorType
) -> None:
    job, _ = _run(settings, store, _raising(error))
    assert job.status in (JobStatus.FAILED, JobStatus.CANCELED)
    assert job.result_status == status and job.error_type == error_type.value
    assert json.loads(job.result_body or "")["error_type"] == error_type.value
