"""A fake `generate` at the seam the service owns: fast, deterministic, steerable from the prompt.

Prompt directives (anywhere in the prompt): `sleep=<s>` per step, `oom` (out of memory at step 2),
`crash` (the worker process dies at step 2), `boom` (an exception), `log=<text>` (a log line).
"""

from __future__ import annotations

import os
import re
import time

from PIL import Image

from reimagine.config import Settings
from reimagine.errors import OutOfMemory
from reimagine.generation import Controls, Generate, Generated, Hooks, aspect_ratio_for
from reimagine.schemas import ReimagineInput, size_for


def fake_generate(inputs: ReimagineInput, controls: Controls, hooks: Hooks) -> Generated:
    prompt = inputs.prompt
    sleep = re.search(r"sleep=([0-9.]+)", prompt)
    per_step = float(sleep.group(1)) if sleep else 0.0
    log = re.search(r"log=(\S+)", prompt)
    if log:
        hooks.log(log.group(1))
    width, height = size_for(aspect_ratio_for(inputs, controls))
    total = inputs.num_inference_steps
    for step in range(1, total + 1):
        hooks.check_cancelled()
        if step == 2 and "oom" in prompt:
            raise OutOfMemory("CUDA out of memory (fake)")
        if step == 2 and "crash" in prompt:
            os._exit(13)
        if step == 2 and "boom" in prompt:
            raise RuntimeError("boom")
        if per_step:
            time.sleep(per_step)
        wanted = "preview" in prompt and hooks.wants_preview(step, total)
        preview = Image.new("RGB", (32, 32), (step * 8 % 256, 0, 0)) if wanted else None
        hooks.on_step(step, total, preview)
    color = (inputs.seed % 256, int(inputs.depth_scale * 255), int(inputs.canny_scale * 255))
    image = Image.new("RGB", (width, height), color)
    maps = {}
    if controls.canny is not None:
        maps["canny"] = controls.canny.convert("L").convert("RGB")
    if controls.depth is not None:
        maps["depth"] = controls.depth.convert("L").convert("RGB")
    return Generated(image=image, maps=maps, prompt=prompt, timings={"denoise": 0.0})


def make_generate(settings: Settings) -> Generate:
    return fake_generate


def make_noop_generate(settings: Settings) -> Generate:
    """For serving-overhead benchmarks: no steps, a 16x16 image."""

    def noop(inputs: ReimagineInput, controls: Controls, hooks: Hooks) -> Generated:
        return Generated(image=Image.new("RGB", (16, 16)), prompt=inputs.prompt)

    return noop


def make_slow_loading_generate(settings: Settings) -> Generate:
    """A model that takes 3 s to load: readiness must wait for it, and jobs submitted meanwhile must queue."""
    time.sleep(3.0)
    return fake_generate


def make_generate_unloadable_once_told(settings: Settings) -> Generate:
    """`make_unloadable_generate`, whose loads first wait for `<data-dir>/fail-now`: a test queues work before the
    workers start failing."""
    while not (settings.data_dir / "fail-now").exists():
        time.sleep(0.05)
    return make_unloadable_generate(settings)


class Clock:
    """A store clock (`open_store(..., clock=)`) that tests move instead of sleeping; starts at the real time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_unloadable_generate(settings: Settings) -> Generate:
    """A model whose weights are missing until `<data-dir>/weights-ok` exists: every start fails before then."""
    from reimagine.errors import ModelMissing

    if not (settings.data_dir / "weights-ok").exists():
        raise ModelMissing("fake weights are missing (touch weights-ok)")
    return fake_generate
