"""On a CUDA device only (`-m gpu`; skipped elsewhere): the memory cap of `test_oom_seed` fails a request in the real
allocator, the next request runs and gives the same image; requests log their peak GPU memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reimagine.config import Settings
from reimagine.errors import OutOfMemory
from reimagine.generation import Controls
from reimagine.worker import random_full
from reimagine.worker.pipeline import generate, load_pipeline
from tests.pipeline.helpers import RecordingHooks, make_inputs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_a_request_over_the_memory_cap_is_out_of_memory_and_the_worker_recovers() -> None:
    settings = Settings(model="random-full", device="cuda", fast=False, test_oom_seed=7)
    pipe = load_pipeline(settings, architecture=random_full.TINY)
    hooks = RecordingHooks()
    size = (1024, 1024)  # the VAE decode alone needs new blocks at this size, whatever the model's scale
    before = generate(pipe, make_inputs(seed=8), Controls(), hooks, _size=size)
    assert any(message.startswith("peak GPU memory ") for message, _ in hooks.logs)
    with pytest.raises(OutOfMemory):
        generate(pipe, make_inputs(seed=7), Controls(), RecordingHooks(), _size=size)
    after = generate(pipe, make_inputs(seed=8), Controls(), RecordingHooks(), _size=size)
    assert after.image.tobytes() == before.image.tobytes()


def test_the_tiny_pipeline_on_cuda_matches_the_cpu_within_tolerance() -> None:
    # The same random-weight model, seeds and inputs on both devices: kernels differ (TF32, fused attention), so the
    # images agree to a tolerance, not bit for bit. A broken device path (dtype, layout, a stale cache) shows as noise.
    inputs = make_inputs(num_inference_steps=2, seed=3)
    images = []
    for device in ("cpu", "cuda"):
        pipe = load_pipeline(Settings(model="tiny", device=device, fast=False))
        images.append(generate(pipe, inputs, Controls(), RecordingHooks(), _size=(128, 96)).image)
    cpu, cuda = (np.asarray(image, dtype=np.float32) for image in images)
    assert cpu.shape == cuda.shape
    assert np.abs(cpu - cuda).mean() < 4.0, np.abs(cpu - cuda).mean()
