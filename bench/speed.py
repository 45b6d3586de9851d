"""Speed against the compute floor: Bria 3.2 + ControlNet-Union, random full-size weights, in one command.

    python bench/speed.py --tiny --steps 1 --out /tmp/x                 # CPU smoke run (CI), tiny configs, same code
    python bench/speed.py --out DIR --deadline 300 --budget 330          # GPU: the plan in bench/README.md
    bash bench/speed_gpu.sh run                                          # the same on a lent GPU machine

Builds the full-size transformer (8+28 blocks), the ControlNet-Union (4 double + 10 single blocks, the
`from_transformer` default, since the released config is unpublished), the SDXL VAE and T5-XXL with random weights on
the device, and measures the served code (`pipeline.generate`) eager and on the fast path (`reimagine.worker.fast`).
Floor = (transformer + ControlNet FLOPs of the CFG denoise loop, counted by `FlopCounterMode` on the meta device) /
the bf16 matmul peak measured in the same run; ratio = measured denoise-loop time / floor (T5, VAE encode and decode
are timed apart). Rows that only need the per-step time run fewer steps (`--short-steps`): their ratio is exact (the
floor is counted for the same steps) and their seconds per image are projected to `--steps`, which the row says.

Sections run in the order `--only` gives them, each isolated (a failure is noted and the run goes on; the exit code
is non-zero at the end). The pipe is built once: everything that needs it unmodified (the eager rows of every
requested section, the one-forward error yardstick, the ablation steps) runs first, then the fast path is applied
once. `--deadline S`: no section or row starts after S seconds from process start; `--budget S`: the process
interrupts itself (SIGINT) at S seconds. `RESULTS.md`, `results.json` and `speed.png` are rewritten in `--out` after
every row, so whatever stops the run, what was measured is there. Expected seconds per section on an H200 are in
`SECTIONS` and bench/README.md.
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # the deadline and the budget count from here, before the heavy imports

import os  # noqa: E402

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read at its import: notices would flood the output tail

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from reimagine.config import Settings  # noqa: E402
from reimagine.generation import Controls, Generated, NullHooks  # noqa: E402
from reimagine.schemas import SIZES  # noqa: E402
from reimagine.worker import fast  # noqa: E402
from reimagine.worker.random_full import (  # noqa: E402
    FULL,
    TINY,
    build_components,
    controlnet_kwargs,
    transformer_kwargs,
)

#: name -> (expected seconds on an H200 in the one-command plan, what it measures). Order = the plan's priority.
SECTIONS: dict[str, tuple[int, str]] = {
    "peak": (3, "bf16 matmul peak (0.5 s warm, >= 100 products: median and spread) and copy bandwidth"),
    "t2i": (95, "build; eager rows of every section; yardstick; fast path once; fast 1024² T2I (30 steps)"),
    "control": (12, "canny+depth fast (its eager row runs in the eager phase), short steps"),
    "fp8": (40, "FP8 linears (torchao) on top of the fast path, T2I and canny+depth, short steps; then undone"),
    "batch": (20, "one denoiser step at batch 2 (one request under CFG) vs 4 (two requests), random inputs"),
    "ablate": (0, "one fast-path ingredient at a time, on the way to the fast path (else a fresh build)"),
    "cache": (5, "the served step cache (First-Block-Cache) on T2I; n/a with structure images"),
    "vae": (25, "VAE decode per image at 1024²: as served vs its decoder compiled (compile time, rel err)"),
    "cold": (80, "warm the 8 other buckets here (empty cache), then a fresh process restarts on the warm cache"),
    "dynamic": (110, "dynamic=True in fresh processes: first start (empty cache), restart; step time vs static"),
    "modes": (300, "compile modes / inductor settings vs today's, each in a capped fresh process (transformer)"),
    "sizes": (55, "the fast path at the other eight buckets, short steps"),
    # issue 19, each change as its own row on the same fast-path pipe (after t2i/control when those run first)
    "nosync": (10, "no sync in the step loop (the default) vs a sync + preview at every step (before), short steps"),
    "graphs": (15, "the denoisers replayed from CUDA graphs, T2I and canny+depth, short steps"),
    "control1": (25, "canny+depth: one ControlNet forward for both conditions (default) vs one each, short steps"),
    "fp8scale": (45, "FP8 per-row vs per-tensor scaling: one transformer forward, time and rel err vs fast"),
    "pair": (25, "two T2I requests in one batch (generate_batch) vs one: images/hour, short steps"),
}
TASKS = {"t2i": [], "canny+depth": [("depth", 0), ("canny", 1)]}  # condition name -> ControlNet-Union mode
SECTION_TASK = {"t2i": "t2i", "control": "canny+depth"}
SQUARE = (1024, 1024)
SCALE = 1  # --scale: tiny runs divide each side by 4 (CPU VAE at 1024² dominates otherwise); rows keep bucket names

# --- building the models ---------------------------------------------------------------------------------------------


def build_pipe(arch: dict[str, Any], device: torch.device, settings: Settings, seed: int = 0) -> Any:
    """A `pipeline.ReimaginePipeline` as `load_pipeline` builds it, with random weights initialised on the device
    (seconds at full size; deterministic per seed and device): denoisers and T5 in bf16 on CUDA with T5's `wo` in
    fp32, everything fp32 on CPU, the VAE in fp32 (`BriaPipeline` forces it). The models are the `random-full`
    preset's (`reimagine.worker.random_full`)."""
    from diffusers import BriaPipeline

    from reimagine.worker.controlnet_bria import BriaMultiControlNetModel
    from reimagine.worker.pipeline import ReimaginePipeline

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    components, controlnet = build_components(arch, device, dtype=dtype, seed=seed)
    for block in components["text_encoder"].encoder.block:  # as load_pipeline: T5's output projections stay fp32
        block.layer[-1].DenseReluDense.wo.to(torch.float32)
    bria = BriaPipeline(**components)
    bria.set_progress_bar_config(disable=True)
    multi = BriaMultiControlNetModel([controlnet])
    return ReimaginePipeline(bria=bria, controlnet=multi, settings=settings, device=device)


# --- running one image -----------------------------------------------------------------------------------------------


class DeadlinePassed(Exception):
    """Raised before a section or row would start after `--deadline`."""


class RowFailed(Exception):
    """A measurement that must not be reported as one (non-finite latents, a recompile-limit hit)."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def scaled(size: tuple[int, int]) -> tuple[int, int]:
    return size[0] // SCALE, size[1] // SCALE


def control_images(size: tuple[int, int]) -> Any:
    """Random depth and canny maps (used as given: `*_preprocess` off, so no depth model runs)."""
    import numpy as np
    from PIL import Image

    from reimagine.generation import Controls

    rng = np.random.default_rng(0)
    width, height = scaled(size)
    depth = Image.fromarray((rng.random((height, width, 3)) * 255).astype("uint8"))
    canny = Image.fromarray(((rng.random((height, width, 3)) > 0.9) * 255).astype("uint8"))
    return Controls(depth=depth, canny=canny)


def run_image(pipe: Any, size: tuple[int, int], task: str, steps: int, hooks: Any = None) -> dict:
    """One request through the served code, `pipeline.generate` (T5 with the default negative prompt, control
    images VAE-encoded once, `steps` CFG steps with the ControlNet per condition, VAE decode, per-step preview).
    Returns its phase timings, the wall time and the final latents (captured at the VAE decode)."""
    from reimagine.generation import Controls, NullHooks
    from reimagine.schemas import ReimagineInput
    from reimagine.worker.pipeline import generate

    fields = {"prompt": "a photo of a red cat on a sofa", "prompt_enhancer": False, "seed": 5555}
    fields |= {"depth_scale": 0.5, "canny_scale": 0.5, "depth_preprocess": False, "canny_preprocess": False}
    inputs = ReimagineInput.model_validate(fields).model_copy(update={"num_inference_steps": steps})
    controls = control_images(size) if TASKS[task] else Controls()
    vae = pipe.bria.vae
    captured: dict[str, torch.Tensor] = {}
    decode = vae.decode

    def capture(latents: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        captured["latents"] = latents.float().cpu()
        return decode(latents, *args, **kwargs)

    vae.decode = capture
    try:
        sync(pipe.device)
        start = time.perf_counter()
        out = generate(pipe, inputs, controls, hooks or NullHooks(), _size=scaled(size))
        sync(pipe.device)
        wall = time.perf_counter() - start
    finally:
        del vae.decode
    return {"times": {**out.timings, "image": wall}, "latents": captured["latents"]}


def measure(
    pipe: Any, size: tuple[int, int], task: str, steps: int, args: argparse.Namespace, hooks: Any = None
) -> dict:
    """`--warmup` short runs (2 steps: the same graphs and kernels), then `--repeat` timed runs of `steps` steps;
    the fastest run's phases (the least disturbed one) and the spread of the denoise loop over the runs."""
    device = pipe.device
    for _ in range(args.warmup):
        run_image(pipe, size, task, min(2, steps), hooks)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs = [run_image(pipe, size, task, steps, hooks) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r["times"]["image"])
    denoise = [r["times"]["denoise"] for r in runs]
    best["spread"] = (max(denoise) - min(denoise)) / min(denoise) if len(denoise) > 1 else None
    best["mem_gib"] = peak_memory_gib(device)
    if not bool(torch.isfinite(best["latents"]).all()):
        raise RowFailed("the final latents are not finite")
    return best


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process RSS (KiB on Linux)


def random_step_inputs(transformer: Any, size: tuple[int, int], batch: int, seed: int = 0) -> dict[str, Any]:
    """One denoiser call's inputs at `size` (already scaled) and `batch`: random latents and text (zeros run ~13 %
    faster on an H200), the real 2-D position ids of the packed latents, t = 500."""
    width, height = size
    rows, cols = height // 16, width // 16
    param = next(transformer.parameters())
    device, dtype = param.device, param.dtype
    config = transformer.config
    generator = torch.Generator(device).manual_seed(seed)
    img_ids = torch.zeros(rows, cols, 3, device=device)
    img_ids[..., 1] = torch.arange(rows, device=device)[:, None]
    img_ids[..., 2] = torch.arange(cols, device=device)[None, :]
    return dict(
        hidden_states=torch.randn(batch, rows * cols, config.in_channels, generator=generator, device=device).to(dtype),
        encoder_hidden_states=torch.randn(
            batch, fast.TEXT_TOKENS, config.joint_attention_dim, generator=generator, device=device
        ).to(dtype),
        timestep=torch.full((batch,), 500.0, device=device, dtype=dtype),
        img_ids=img_ids.reshape(-1, 3).to(dtype),
        txt_ids=torch.zeros(fast.TEXT_TOKENS, 3, device=device, dtype=dtype),
    )


def time_forward(transformer: Any, inputs: dict[str, Any], repeat: int) -> tuple[float, float]:
    """Median seconds of one transformer forward over `repeat` calls after one untimed call, and the spread."""
    device = next(transformer.parameters()).device
    transformer(**inputs, return_dict=False)
    return time_call(lambda: transformer(**inputs, return_dict=False), repeat, device)


# --- FLOPs, peak, floor ----------------------------------------------------------------------------------------------


def count_flops(arch: dict[str, Any], size: tuple[int, int], batch: int) -> dict[str, float]:
    """FLOPs of one transformer forward and one ControlNet forward (one condition, its 14 output projections
    included) at `batch`, on the meta device; equals the analytic 24·D²·S + 4·S²·D per block of bria-model.md §7.1."""
    from torch.utils.flop_counter import FlopCounterMode

    from reimagine.worker.controlnet_bria import BriaControlledTransformer2DModel, BriaControlNetModel

    width, height = scaled(size)
    n, d_text = (height // 16) * (width // 16), arch["transformer"]["joint_attention_dim"]
    out = {}
    with torch.device("meta"):
        tr = BriaControlledTransformer2DModel(**transformer_kwargs(arch))
        cn = BriaControlNetModel(**controlnet_kwargs(arch))
        x, e = torch.randn(batch, n, 16), torch.randn(batch, 128, d_text)
        ids, tids, t, mode = torch.zeros(n, 3), torch.zeros(128, 3), torch.ones(batch), torch.zeros(batch, 1).long()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        tr(hidden_states=x, encoder_hidden_states=e, timestep=t, img_ids=ids, txt_ids=tids, return_dict=False)
    out["transformer"] = float(fc.get_total_flops())
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        cn(x, x, mode, 1.0, encoder_hidden_states=e, timestep=t, img_ids=ids, txt_ids=tids)
    out["controlnet"] = float(fc.get_total_flops())
    return out


def image_flops(arch: dict[str, Any], size: tuple[int, int], task: str, steps: int) -> float:
    f = count_flops(arch, size, 2)
    return steps * (f["transformer"] + len(TASKS[task]) * f["controlnet"])


def measure_peak(device: torch.device) -> dict[str, Any]:
    """bf16 matmul TFLOP/s (8192³ on CUDA, random data; fp32 512³ on CPU, the dtype the CPU path runs): products run
    for >= 0.5 s first (an idle GPU clocks down), then >= 100 are timed one by one; the median, and the 10th-90th
    percentile spread. Copy GB/s counts bytes read + written."""
    cuda = device.type == "cuda"
    n, dtype = (8192, torch.bfloat16) if cuda else (512, torch.float32)
    warm_s, count = (0.5, 100) if cuda else (0.05, 10)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    start = time.perf_counter()
    while time.perf_counter() - start < warm_s:
        for _ in range(10):
            a @ b
        sync(device)
    seconds = []
    for _ in range(count):
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            a @ b
            end.record()
            end.synchronize()
            seconds.append(begin.elapsed_time(end) / 1e3)
        else:
            begin_s = time.perf_counter()
            a @ b
            seconds.append(time.perf_counter() - begin_s)
    rates = sorted(2 * n**3 / s / 1e12 for s in seconds)
    src = torch.randn(2**28 if cuda else 2**22, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    reps = 20 if cuda else 5
    dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    sync(device)
    gbs = 2 * src.numel() * 4 * reps / (time.perf_counter() - start) / 1e9
    return {
        "peak_tflops": statistics.median(rates),
        "peak_p10_p90": [rates[len(rates) // 10], rates[(9 * len(rates)) // 10]],
        "peak_products": count,
        "peak_dtype": str(dtype).removeprefix("torch."),
        "copy_gbs": gbs,
    }


# --- results ---------------------------------------------------------------------------------------------------------


def _row_order(key: str) -> tuple[bool, int, bool, int]:
    """Rows by section, 1024² first then the other buckets, T2I before canny+depth, eager -> fast -> lossy;
    ablation rows last, in the order they were taken (a stable sort keeps it)."""
    if key.startswith("ablate"):
        return (True, 0, False, 0)
    sizes = [f"{w}x{h}" for w, h in [SQUARE, *(s for s in SIZES.values() if s != SQUARE)]]
    size = next((i for i, s in enumerate(sizes) if key.startswith(f"{s} ")), len(sizes))
    path = key.split(" ", 2)[-1]
    ranks = ["eager", "fast", "step at batch", "step-cache", "fp8"]
    rank = 2 if "step at batch" in path else next((i for i, p in enumerate(ranks) if path.startswith(p)), len(ranks))
    return (False, size, "canny" in key, rank)


class Results:
    """results.json (merged across `--only` runs on the same device and mode) -> RESULTS.md + speed.png."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "results.json"
        old = json.loads(self.path.read_text()) if self.path.exists() else {}
        same = old.get("meta", {}).get("device") == meta["device"] and old.get("meta", {}).get("tiny") == meta["tiny"]
        self.data: dict[str, Any] = old if same else {"meta": {}, "rows": {}, "notes": {}}
        # Rows of runs before the fast path was named for what it is (it was "lossless"; it is bf16-tolerant).
        self.data["rows"] = {key.replace("lossless", "fast"): row for key, row in self.data["rows"].items()}
        self.data.setdefault("sections", {})
        self.data["meta"].update(meta)
        command = "python bench/speed.py " + " ".join(sys.argv[1:])
        self.data["meta"]["commands"] = [*self.data["meta"].get("commands", []), command][-12:]

    def row(self, key: str, **values: Any) -> None:
        self.data["rows"][key] = {**self.data["rows"].get(key, {}), **values}
        self.write()

    def note(self, key: str, text: str) -> None:
        self.data["notes"][key] = text
        self.write()

    def section(self, name: str, status: str) -> None:
        self.data["sections"][name] = status
        self.write()

    def write(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1))
        (self.out / "RESULTS.md").write_text(self.markdown())
        self.chart()

    def sorted_rows(self) -> dict[str, dict[str, Any]]:
        return dict(sorted(self.data["rows"].items(), key=lambda item: _row_order(item[0])))  # stable

    def ratio_lines(self) -> list[str]:
        lines = []
        for key, r in self.sorted_rows().items():
            if "ratio" in r:
                lines.append(f"ratio_to_floor {key}: {r['ratio']:.2f}x")
            elif "skipped_reason" in r:
                lines.append(f"ratio_to_floor {key}: n/a ({r['skipped_reason']})")
        # The issues call the default fast path "lossless"; its rows are named for what it is (compiled,
        # bf16-tolerant: "fast"). The same figure under the issues' name, so that either name finds it.
        for key, r in self.sorted_rows().items():
            if key.endswith(" fast") and "ratio" in r:
                lines.append(f"ratio_to_floor {key[: -len(' fast')]} lossless: {r['ratio']:.2f}x")
        return lines

    def markdown(self) -> str:
        m = self.data["meta"]
        lines = ["# Speed against the compute floor (bench/speed.py)", ""]
        if m.get("tiny"):
            lines += [
                "> **CPU tiny smoke run: no GPU was available.** Tiny random-weight configs on a CPU; the figures",
                "> below are NOT GPU figures and say nothing about serving speed. On a GPU: `python bench/speed.py`",
                "> (a lent machine: `bench/speed_gpu.sh`, bench/README.md).",
                "",
            ]
        lines += [
            f"- device: {m.get('device')}; date: {m.get('date')}",
            f"- torch {m.get('torch')}; diffusers {m.get('diffusers')}",
            "- commands: " + "; ".join(f"`{c}`" for c in m.get("commands", [])),
            f"- config: {'tiny' if m.get('tiny') else 'full size'}, {m.get('steps')} steps (rows marked 'projected':"
            f" {m.get('short_steps')} measured), CFG 5, 128 text tokens, ControlNet-Union 4 double + 10 single "
            "blocks (tiny: 1 + 1), conditions at scale 0.5"
            + (f"; images generated at 1/{m['scale']} of each bucket's side" if m.get("scale", 1) > 1 else ""),
            "- paths: eager = diffusers' modules in bf16, no compile; fast = the served default, compiled and "
            "bf16-tolerant (fused QKV, the attention backend picked, regional torch.compile, cuDNN autotuning): "
            "within bf16 rounding of eager (rel err), not bit-identical to it; step-cache and fp8 are lossy",
            "- mem GiB: peak CUDA memory allocated (on CPU: the process's peak RSS); spread: (slowest - fastest) / "
            "fastest denoise loop over the timed runs",
        ]
        if "flops_1024" in m:
            f = m["flops_1024"]
            lines.append(
                f"- FLOPs per forward at batch 1, 1024²: transformer {f['transformer'] / 1e12:.2f} TFLOP, ControlNet "
                f"{f['controlnet'] / 1e12:.2f} TFLOP per condition (its output projections included)"
            )
        if "peak_tflops" in m:
            p10, p90 = m.get("peak_p10_p90", [m["peak_tflops"]] * 2)
            lines.append(
                f"- measured matmul peak: {m['peak_tflops']:.1f} TFLOP/s ({m['peak_dtype']}; median of "
                f"{m.get('peak_products', '?')} products after a warm-up, p10-p90 {p10:.1f}-{p90:.1f}); copy "
                f"bandwidth: {m['copy_gbs']:.0f} GB/s"
            )
        lines += [
            "- floor = (transformer + ControlNet FLOPs of the denoise loop) / matmul peak; ratio = measured "
            "denoise-loop time / floor; T5 + control-image VAE encode (column encode) and the VAE decode are timed "
            "separately; image = wall time of `pipeline.generate` (T5, encode, denoise, decode, previews).",
            "",
        ]
        rows = self.sorted_rows()
        lines += ["## Ratios to the floor", "", "```", *self.ratio_lines(), "```", "", "## Measurements", ""]
        head = [
            "size task path",
            "PFLOP/img",
            "floor s",
            "step ms",
            "denoise s",
            "encode s",
            "decode s",
            "image s",
            "TFLOP/s",
            "ratio",
            "spread",
            "mem GiB",
            "rel err",
            "images/h",
            "note",
        ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

        def f(value: Any, spec: str) -> str:
            return "" if value is None else format(value, spec)

        for key, r in rows.items():
            note = "; ".join(s for s in (r.get("note"), r.get("skipped_reason"), r.get("error")) if s)
            cells = [
                key,
                f(r.get("pflop"), ".4g"),
                f(r.get("floor_s"), ".4g"),
                f(r.get("step_ms"), ".4g"),
                f(r.get("denoise_s"), ".4g"),
                f(r.get("encode_s"), ".3g"),
                f(r.get("decode_s"), ".3g"),
                f(r.get("image_s"), ".4g"),
                f(r.get("tflops"), ".4g"),
                f(r.get("ratio"), ".2f"),
                f(r.get("spread"), ".1%"),
                f(r.get("mem_gib"), ".1f"),
                f(r.get("rel_err"), ".2e"),
                f(r.get("images_per_hour"), ".0f"),
                note,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if self.data["notes"]:
            lines += ["", "## Notes", ""] + [f"- **{k}**: {v}" for k, v in self.data["notes"].items()]
        if self.data["sections"]:
            lines += ["", "## Sections", ""] + [f"- {k}: {v}" for k, v in self.data["sections"].items()]
        return "\n".join(lines) + "\n"

    def chart(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = {k: r for k, r in self.sorted_rows().items() if "denoise_s" in r and "floor_s" in r}
        if not rows:
            return
        fig, ax = plt.subplots(figsize=(11, 4.5))
        labels = list(rows)
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], [r["floor_s"] for r in rows.values()], 0.4, label="floor (FLOPs / peak)")
        ax.bar([x + 0.2 for x in xs], [r["denoise_s"] for r in rows.values()], 0.4, label="measured denoise loop")
        ax.set_xticks(list(xs), labels, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel(f"seconds per image ({self.data['meta'].get('steps')} steps)")
        ax.set_title(
            f"{self.data['meta'].get('device')}{' (CPU tiny smoke run)' if self.data['meta'].get('tiny') else ''}"
        )
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.out / "speed.png", dpi=110)
        plt.close(fig)


# --- sections --------------------------------------------------------------------------------------------------------


def linear_weights(models: list[Any]) -> list[tuple[Any, str, Any, Any]]:
    """(parent, name, linear, weight) of every nn.Linear: FP8 replaces weights (and may replace modules) in place,
    so keeping these lets the bench undo it; the compiled graphs for plain weights stay cached and match again."""
    from torch import nn

    return [
        (parent, name, child, child.weight)
        for model in models
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]


def restore_linear_weights(saved: list[tuple[Any, str, Any, Any]]) -> None:
    for parent, name, child, weight in saved:
        setattr(parent, name, child)
        if child.weight is not weight:
            child.weight = weight
        child.__dict__.pop("extra_repr", None)


class Bench:
    def __init__(self, args: argparse.Namespace, only: list[str]) -> None:
        self.args = args
        self.only = only
        self.arch = TINY if args.tiny else FULL
        self.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        import diffusers

        name = (
            torch.cuda.get_device_name(self.device)
            if self.device.type == "cuda"
            else f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
        )
        self.results = Results(
            Path(args.out),
            {
                "device": name,
                "tiny": args.tiny,
                "steps": args.steps,
                "short_steps": args.short_steps,
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "scale": args.scale,
                "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            },
        )
        self.work = Path(args.work)  # reference latents and the compile cache: outside the repo
        self.work.mkdir(parents=True, exist_ok=True)
        self.settings = Settings(data_dir=self.work / "data", fp8=False, step_cache=0.0)  # type: ignore[call-arg]
        self.pipe: Any = None
        self.state = "none"  # "eager" | "fast"
        self.eager_done = False  # the eager phase ran (once per build)
        self.ablated = False
        self.builds = 0
        self.failed: list[str] = []
        self.yard: dict[str, Any] = {}
        self.flops: dict[tuple[tuple[int, int], str, int], float] = {}

    # plumbing

    @staticmethod
    def elapsed() -> float:
        return time.monotonic() - T0

    def gate(self, what: str) -> None:
        """No section or row starts after `--deadline`."""
        if self.elapsed() > self.args.deadline:
            raise DeadlinePassed(f"{what}: not started, past the deadline ({self.args.deadline:.0f}s)")

    @property
    def peak(self) -> float:
        if "peak_tflops" not in self.results.data["meta"]:
            self.section_peak()
        return float(self.results.data["meta"]["peak_tflops"])

    @property
    def short_steps(self) -> int:
        return min(self.args.short_steps, self.args.steps)

    def options(self, **overrides: Any) -> fast.FastOptions:
        cuda = self.device.type == "cuda"
        compile_ = self.args.compile or ("regional" if cuda else "none")  # CPU inductor compiles take minutes
        base = dict(
            bf16=cuda,
            attention=self.args.attention,
            compile=compile_,
            compile_mode=self.args.compile_mode,
            fullgraph=self.args.fullgraph,
            dynamic=self.args.dynamic,
        )
        return fast.FastOptions(**{**base, **overrides})  # type: ignore[arg-type]

    def build(self) -> Any:
        """A fresh eager pipe (random weights on the device)."""
        self.gate("build")
        self.pipe, self.state, self.eager_done = None, "none", False
        torch._dynamo.reset()  # compiled blocks keep the old modules alive
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        start = time.perf_counter()
        self.pipe = build_pipe(self.arch, self.device, self.settings)
        sync(self.device)
        self.builds += 1
        self.results.note(
            "build", f"random weights built on the device in {time.perf_counter() - start:.1f}s ({self.builds} builds)"
        )
        self.state = "eager"
        return self.pipe

    def try_row(self, key: str, measure_row: Any) -> None:
        """Run one row; an error is recorded on the row and the run goes on (deadline and interrupt pass through)."""
        try:
            measure_row()
        except (DeadlinePassed, KeyboardInterrupt):
            raise
        except Exception as exc:
            traceback.print_exc()
            self.failed.append(key)
            self.results.row(key, error=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")

    def image_row(
        self, key: str, size: tuple[int, int], task: str, steps: int, hooks: Any = None, **extra: Any
    ) -> dict:
        self.gate(key)
        run = measure(self.pipe, size, task, steps, self.args, hooks)
        self.save_reference(size, task, key.split(" ", 2)[-1], steps, run["latents"])
        if "rel_err_vs" in extra:
            extra["rel_err"] = self.rel_err(run["latents"], self.reference(size, task, extra.pop("rel_err_vs"), steps))
        self.record(key, size, task, run, steps, **extra)
        return run

    def record(self, key: str, size: tuple[int, int], task: str, run: dict, steps: int, **extra: Any) -> None:
        """One row; with fewer steps than `--steps` the ratio is exact and the per-image seconds are projected."""
        full = self.args.steps
        flops_key = (size, task, steps)
        if flops_key not in self.flops:
            self.flops[flops_key] = image_flops(self.arch, size, task, steps)
        flops = self.flops[flops_key]
        tm = run["times"]
        floor = flops / (self.peak * 1e12)
        step_s = tm["denoise"] / steps
        image_s = tm["image"] + step_s * (full - steps)
        note = "; ".join(s for s in (extra.pop("note", None), self.projected(steps)) if s)
        if note:
            extra["note"] = note
        self.results.row(
            key,
            steps=steps,
            pflop=flops * full / steps / 1e15,
            floor_s=floor * full / steps,
            denoise_s=step_s * full,
            step_ms=1e3 * step_s,
            encode_s=tm["encode"],
            decode_s=tm["decode"],
            image_s=image_s,
            tflops=flops / tm["denoise"] / 1e12,
            ratio=tm["denoise"] / floor,
            spread=run.get("spread"),
            mem_gib=run["mem_gib"],
            images_per_hour=3600 / image_s,
            **extra,
        )
        print(f"{key}: step {1e3 * step_s:.1f} ms, ratio {tm['denoise'] / floor:.2f}x {extra}", flush=True)

    def reference(self, size: tuple[int, int], task: str, path: str, steps: int) -> torch.Tensor | None:
        file = self.ref_file(size, task, path, steps)
        return torch.load(file) if file.exists() else None

    def save_reference(self, size: tuple[int, int], task: str, path: str, steps: int, latents: torch.Tensor) -> None:
        torch.save(latents, self.ref_file(size, task, path, steps))

    def ref_file(self, size: tuple[int, int], task: str, path: str, steps: int) -> Path:
        arch = "tiny" if self.args.tiny else "full"
        name = f"ref-{arch}-{self.device.type}-{steps}steps-{size[0]}x{size[1]}-{task}-{path}.pt"
        return self.work / name.replace(" ", "_")

    def fast_reference(self, task: str, steps: int) -> torch.Tensor:
        """The fast path's final latents at 1024² and `steps` (from an earlier row, else measured now)."""
        latents = self.reference(SQUARE, task, "fast", steps)
        if latents is None:
            pipe = self.fast_path()
            fast.warm_buckets(pipe, [scaled(SQUARE)], conditions=len(TASKS[task]))
            latents = run_image(pipe, SQUARE, task, steps)["latents"]
            self.save_reference(SQUARE, task, "fast", steps, latents)
        return latents

    def projected(self, steps: int) -> str:
        return f"{steps} steps, projected to {self.args.steps}" if steps != self.args.steps else ""

    @staticmethod
    def rel_err(a: torch.Tensor, b: torch.Tensor | None) -> float | None:
        return None if b is None else float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))

    @staticmethod
    def size_key(size: tuple[int, int]) -> str:
        return f"{size[0]}x{size[1]}"

    # the eager phase and the one transition to the fast path

    def eager_phase(self) -> None:
        """Everything that needs the unmodified pipe, for every requested section, before the fast path is applied
        once: the eager rows, the one-forward error yardstick, and (with `ablate`) the ingredients one at a time."""
        if self.eager_done:
            return
        if self.state != "eager":
            self.build()
        self.eager_done = True  # a failure below must not rerun the phase in every later section
        key = self.size_key(SQUARE)
        note = "bf16, SDPA, no compile" if self.device.type == "cuda" else "fp32"
        for section, task in SECTION_TASK.items():
            if section in self.only:
                steps = self.args.steps if task == "t2i" else self.short_steps
                self.try_row(f"{key} {task} eager", lambda t=task, s=steps: self.image_row(
                    f"{key} {t} eager", SQUARE, t, s, note=note))  # fmt: skip
        self.try_row(f"{key} t2i one forward, fast vs eager", self.yardstick_eager)

    def fast_path(self) -> Any:
        """The pipe on the fast path (applied once per build; the eager phase runs first)."""
        if self.state == "fast":
            return self.pipe
        self.eager_phase()
        if "ablate" in self.only and not self.ablated:
            self.ablation()
        else:
            self.gate("fast path")
            start = time.perf_counter()
            fast.apply_fast_path(self.pipe, self.settings, options=self.options())
            self.state = "fast"
            warm = fast.warm_buckets(self.pipe, [scaled(SQUARE)], conditions=0)
            self.setup_note(time.perf_counter() - start, warm)
        self.try_row(f"{self.size_key(SQUARE)} t2i one forward, fast vs eager", self.yardstick_fast)
        return self.pipe

    def setup_note(self, seconds: float, warm: dict[str, float]) -> None:
        from torch._dynamo.utils import counters

        options = self.options()
        breaks = sum(counters["graph_break"].values())
        reasons = "; ".join(list(counters["graph_break"])[:3])
        self.results.note(
            "fast path",
            f"attention {getattr(self.pipe, '_fast_attention', '?')}; {options.compile} compile, mode "
            f"{options.compile_mode}: apply + warm 1024² T2I {seconds:.1f}s "
            f"({warm[self.size_key(scaled(SQUARE))]:.1f}s warm), {breaks} graph breaks"
            + (f" ({reasons})" if reasons else ""),
        )

    def yardstick_eager(self) -> None:
        """One transformer forward at 1024² (CFG batch, random inputs) eager, and on an fp32 copy: the error of bf16
        rounding alone, the yardstick for the fast path's error (`yardstick_fast`)."""
        self.gate("yardstick")
        transformer = fast.denoisers(self.pipe)[0]
        inputs = random_step_inputs(transformer, scaled(SQUARE), 2, seed=1)
        eager = transformer(**inputs, return_dict=False)[0].float()
        reference = copy.deepcopy(transformer).float()
        fp32 = reference(**{k: v.float() for k, v in inputs.items()}, return_dict=False)[0]
        del reference
        gc.collect()
        self.yard = {"inputs": inputs, "eager": eager, "fp32": fp32}

    def yardstick_fast(self) -> None:
        if not self.yard:
            return
        transformer = fast.denoisers(self.pipe)[0]
        out = transformer(**self.yard["inputs"], return_dict=False)[0].float()
        if not bool(torch.isfinite(out).all()):
            raise RowFailed("the fast forward is not finite")
        yard = self.rel_err(self.yard["eager"], self.yard["fp32"])
        self.results.row(
            f"{self.size_key(SQUARE)} t2i one forward, fast vs eager",
            rel_err=self.rel_err(out, self.yard["eager"]),
            note=f"yardstick: eager vs an fp32 copy {yard:.2e}; fast vs fp32 "
            f"{self.rel_err(out, self.yard['fp32']):.2e}",
        )
        self.yard = {}

    def ablation(self) -> None:
        """The fast path one ingredient at a time (T2I 1024², short steps), ending on the full fast path."""
        self.ablated = True
        steps = self.short_steps
        key = self.size_key(SQUARE)
        no = dict(compile="none", cache_negative=False, vae_channels_last=False)
        ingredients = [
            ("eager", None),
            ("+fused-qkv", self.options(**{**no, "attention": "native"})),
            ("+attention", self.options(**no)),
            ("+neg-cache", self.options(compile="none", vae_channels_last=False)),
            ("+vae-nhwc", self.options(compile="none")),
            (f"+compile ({self.options().compile})", self.options()),
        ]
        for name, options in ingredients:
            self.gate(f"ablate {name}")
            start = time.perf_counter()
            if options is not None:
                fast.apply_fast_path(self.pipe, self.settings, options=options)
            warm = fast.warm_buckets(self.pipe, [scaled(SQUARE)], conditions=0)
            setup_s = time.perf_counter() - start
            if name.startswith("+compile"):
                self.state = "fast"
                self.setup_note(setup_s, warm)
            run = measure(self.pipe, SQUARE, "t2i", steps, self.args)
            self.results.row(
                f"ablate {key} t2i {name}",
                step_ms=1e3 * run["times"]["denoise"] / steps,
                denoise_s=run["times"]["denoise"] * self.args.steps / steps,
                encode_s=run["times"]["encode"],
                decode_s=run["times"]["decode"],
                spread=run["spread"],
                note="; ".join(s for s in (f"apply + warm {setup_s:.1f}s", self.projected(steps)) if s),
            )
        self.state = "fast"

    # sections

    def section_peak(self) -> None:
        peak = measure_peak(self.device)
        self.results.data["meta"].update(peak)
        self.results.data["meta"]["flops_1024"] = count_flops(self.arch, SQUARE, 1)
        self.results.write()
        print(f"peak: {peak}", flush=True)

    def section_t2i(self) -> None:
        """Eager (eager phase) vs the fast path, T2I 1024², the true `--steps`."""
        self.fast_path()
        key = self.size_key(SQUARE)
        eager = self.results.data["rows"].get(f"{key} t2i eager", {}).get("denoise_s")
        run = self.image_row(f"{key} t2i fast", SQUARE, "t2i", self.args.steps, rel_err_vs="eager")
        if eager:
            self.results.row(f"{key} t2i fast", note=f"{eager / run['times']['denoise']:.2f}x vs eager")

    def section_control(self) -> None:
        """Canny+depth at 1024²: eager (eager phase) vs fast, short steps."""
        pipe = self.fast_path()
        key, steps = self.size_key(SQUARE), self.short_steps
        self.gate(f"{key} canny+depth fast")
        start = time.perf_counter()
        fast.warm_buckets(pipe, [scaled(SQUARE)], conditions=2)
        warm_s = time.perf_counter() - start
        eager = self.results.data["rows"].get(f"{key} canny+depth eager", {}).get("step_ms")
        run = self.image_row(f"{key} canny+depth fast", SQUARE, "canny+depth", steps, rel_err_vs="eager")
        note = f"ControlNet warm {warm_s:.1f}s"
        if eager:
            note = f"{eager / (1e3 * run['times']['denoise'] / steps):.2f}x vs eager; " + note
        self.results.row(f"{key} canny+depth fast", note="; ".join(s for s in (note, self.projected(steps)) if s))

    def section_ablate(self) -> str | None:
        """Measured in the eager phase's transition when requested; else a fresh build for it."""
        if self.ablated:
            return "measured on the way to the fast path (eager phase)"
        if self.state != "eager":
            self.build()
        self.fast_path()
        return None

    def section_sizes(self) -> None:
        """The fast path, T2I, at the other eight aspect buckets; images/hour per GPU."""
        pipe = self.fast_path()
        for size in SIZES.values():
            if size == SQUARE:
                continue
            key = f"{self.size_key(size)} t2i fast"
            self.gate(key)
            start = time.perf_counter()
            fast.warm_buckets(pipe, [scaled(size)], conditions=0)
            warm_s = time.perf_counter() - start
            self.try_row(key, lambda k=key, s=size, w=warm_s: self.image_row(
                k, s, "t2i", self.short_steps, note=f"warm {w:.1f}s"))  # fmt: skip

    def section_batch(self) -> None:
        """Does batching two same-size requests raise throughput? One transformer forward at batch 2 (one request
        under CFG) vs batch 4 (two requests), fast path, 1024², random latents and text."""
        pipe = self.fast_path()
        transformer = fast.denoisers(pipe)[0]
        seconds: dict[int, float] = {}
        key = self.size_key(SQUARE)
        for batch, requests in ((2, 1), (4, 2)):
            row = f"{key} t2i fast step at batch {batch} ({requests} request{'s' if requests > 1 else ''})"
            self.gate(row)
            inputs = random_step_inputs(transformer, scaled(SQUARE), batch)
            start = time.perf_counter()
            transformer(**inputs, return_dict=False)  # compiles this batch's graphs
            sync(self.device)
            compile_s = time.perf_counter() - start
            seconds[batch], spread = time_forward(transformer, inputs, max(5, self.args.repeat))
            gain = f"; throughput x{2 * seconds[2] / seconds[4]:.2f} vs one request" if batch == 4 else ""
            self.step_row(row, seconds[batch], spread, batch, note=f"first call {compile_s:.1f}s{gain}")
        gain = 2 * seconds[2] / seconds[4]
        verdict = "batching raises throughput" if gain > 1.1 else "too little to pay for the added latency"
        self.results.note("batching", f"two 1024² requests in one batch: x{gain:.2f} denoise throughput; {verdict}.")

    def section_cache(self) -> None:
        """The served step cache (`pipeline.set_step_cache`, First-Block-Cache at `--cache-threshold`) on top of the
        fast path, as a request gets it: T2I only, since serving turns it off with structure images."""
        from diffusers.hooks.hooks import HookRegistry

        from reimagine.worker.pipeline import set_step_cache

        pipe = self.fast_path()
        steps, key = self.short_steps, self.size_key(SQUARE)
        reference = self.fast_reference("t2i", steps)
        self.results.row(
            f"{key} canny+depth step-cache",
            skipped_reason="the served step cache is off with structure images (pipeline._step_cache)",
        )
        set_step_cache(pipe, self.args.cache_threshold)
        transformer = fast.denoisers(pipe)[0]
        head = HookRegistry.check_if_exists_or_initialize(transformer.transformer_blocks[0])
        state = head.get_hook("fbc_leader_block_hook").state_manager
        skipped = [0]

        def count(module: Any, args: Any, output: Any) -> None:
            skipped[0] += not state.get_state().should_compute

        handle = transformer.register_forward_hook(count)
        try:
            run = self.image_row(f"{key} t2i step-cache", SQUARE, "t2i", steps)
            self.results.row(
                f"{key} t2i step-cache",
                rel_err=self.rel_err(run["latents"], reference),
                note=f"threshold {self.args.cache_threshold}, {skipped[0]} steps skipped over all runs; rel err vs "
                f"fast; {self.projected(steps)}".rstrip("; "),
            )
        finally:
            handle.remove()
            set_step_cache(pipe, 0.0)

    def section_fp8(self) -> None:
        """FP8 linears (torchao) on top of the fast path, then undone (the plain-weight graphs stay cached)."""
        pipe = self.fast_path()
        steps, key = self.short_steps, self.size_key(SQUARE)
        if not fast.fp8_supported(self.device):
            for task in TASKS:
                self.results.row(f"{key} {task} fp8", skipped_reason=f"fp8 needs CUDA sm89+, not {self.device.type}")
            return
        references = {task: self.fast_reference(task, steps) for task in TASKS}
        models = fast.denoisers(pipe)
        saved = linear_weights(models)
        try:
            fast.enable_fp8(models)
            for task in TASKS:
                row = f"{key} {task} fp8"
                self.gate(row)
                start = time.perf_counter()
                fast.warm_buckets(pipe, [scaled(SQUARE)], conditions=len(TASKS[task]))
                warm_s = time.perf_counter() - start
                run = self.image_row(row, SQUARE, task, steps)
                self.results.row(
                    row,
                    rel_err=self.rel_err(run["latents"], references[task]),
                    note=f"rel err vs fast; warm {warm_s:.1f}s; {self.projected(steps)}".rstrip("; "),
                )
        finally:
            restore_linear_weights(saved)
            for model in models:
                model._reimagine_fp8 = False

    def section_vae(self) -> None:
        """VAE decode at 1024², per image: as served (eager fp32, channels-last, cuDNN autotuned) vs its decoder
        compiled (`FastOptions.compile_vae`), with the compile time and the relative error; then undone."""
        self.need(35, "vae")
        pipe = self.fast_path()
        vae, key = pipe.bria.vae, self.size_key(SQUARE)
        width, height = scaled(SQUARE)
        generator = torch.Generator(self.device).manual_seed(2)
        shape = (1, vae.config.latent_channels, height // 8, width // 8)
        latents = torch.randn(shape, generator=generator, device=self.device, dtype=vae.dtype)

        def decode() -> torch.Tensor:
            return vae.decode(latents, return_dict=False)[0]

        self.gate(f"{key} vae decode eager")
        eager = decode()
        eager_s, spread = time_call(decode, max(5, self.args.repeat), self.device)
        self.results.row(f"{key} vae decode eager", decode_s=eager_s, spread=spread, note="fp32, as served")
        if self.options().compile == "none":
            self.results.row(f"{key} vae decode compiled", skipped_reason="compile is off here (--compile to force)")
            return
        self.gate(f"{key} vae decode compiled")
        decoder = vae.decoder
        try:
            start = time.perf_counter()
            fast.compile_vae_decoder(vae, self.options())
            compiled = decode()
            sync(self.device)
            compile_s = time.perf_counter() - start
            if not bool(torch.isfinite(compiled).all()):
                raise RowFailed("the compiled decode is not finite")
            seconds, spread = time_call(decode, max(5, self.args.repeat), self.device)
            self.results.row(
                f"{key} vae decode compiled",
                decode_s=seconds,
                spread=spread,
                rel_err=self.rel_err(compiled, eager),
                note=f"{eager_s / seconds:.2f}x vs eager; compile + first decode {compile_s:.1f}s; rel err vs eager",
            )
        finally:
            decoder.__dict__.pop("forward", None)
            decoder._reimagine_compiled = False

    # fresh processes: cold start, dynamic shapes, compile modes

    def time_left(self) -> float:
        """Seconds until the budget's SIGINT (inf without a budget)."""
        return self.args.budget - self.elapsed()

    def need(self, seconds: float, what: str) -> None:
        """On a GPU, do not start `what` when the budget has less than its expected H200 `seconds` left: a part
        that the budget would cut only spends the lease."""
        if self.device.type == "cuda" and self.time_left() - 10 < seconds:
            raise DeadlinePassed(f"{what}: not started, needs ~{seconds:.0f}s, {self.time_left():.0f}s left")

    def run_child(self, name: str, spec: dict[str, Any], cap_s: float, expect_s: float = 15) -> dict[str, Any]:
        """`spec` in a fresh process (`child_main`), stopped at `cap_s` or 10 s before the budget, whichever is first:
        SIGINT to its process group, SIGKILL 5 s later. It writes its report after every stage, so a stopped child
        still says how far it got. The child dies with this process (PR_SET_PDEATHSIG). On a GPU it is not started
        when less is left than it is expected to need (`expect_s`, H200 seconds): the lease is worth more."""
        cap = min(cap_s, self.time_left() - 10)
        need = expect_s if self.device.type == "cuda" else min(expect_s, 15)
        if cap < need:
            raise DeadlinePassed(f"{name}: not started, needs ~{need:.0f}s, {self.time_left():.0f}s left of the budget")
        report_file = self.work / f"child-{name.replace(' ', '_')}.json"
        report_file.unlink(missing_ok=True)
        log_file = self.work / f"child-{name.replace(' ', '_')}.log"
        spec = {
            **spec,
            "report": str(report_file),
            "tiny": self.args.tiny,
            "scale": SCALE,
            "device": str(self.device),
            "attention": getattr(self.pipe, "_fast_attention", "auto").split(" ")[0],
        }
        print(f"[{name}] child process, cap {cap:.0f}s", flush=True)
        start = time.perf_counter()
        with log_file.open("w") as log:
            child = subprocess.Popen(
                [sys.executable, __file__, "--child", json.dumps(spec)],
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=_die_with_parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            stopped = None
            try:
                child.wait(timeout=cap)
            except subprocess.TimeoutExpired:
                stopped = f"stopped at the cap of {cap:.0f}s"
                _stop_group(child)
            finally:
                if child.poll() is None:
                    _stop_group(child)
        report = json.loads(report_file.read_text()) if report_file.exists() else {}
        report.update(wall_s=time.perf_counter() - start, pid=child.pid)
        if stopped or child.returncode != 0:
            tail = log_file.read_text()[-1500:] if log_file.exists() else ""
            report["stopped"] = stopped or f"exit {child.returncode}: {tail.strip().splitlines()[-1:] or ''}"
            print(f"[{name}] {report['stopped']}; log tail:\n{tail}", flush=True)
        self.results.data.setdefault("children", {})[name] = report
        self.results.write()
        return report

    def static_step_ms(self) -> float:
        """One transformer forward at 1024², batch 2, random inputs, on this process's fast-path pipe (today's
        compile mode and static shapes): the baseline of the `dynamic` and `modes` rows."""
        key = f"{self.size_key(SQUARE)} t2i fast step at batch 2 (1 request)"
        if "step_ms" not in self.results.data["rows"].get(key, {}):
            transformer = fast.denoisers(self.fast_path())[0]
            inputs = random_step_inputs(transformer, scaled(SQUARE), 2)
            seconds, spread = time_forward(transformer, inputs, max(5, self.args.repeat))
            self.step_row(key, seconds, spread, 2, note="static shapes, default mode")
        return float(self.results.data["rows"][key]["step_ms"])

    def step_row(self, key: str, seconds: float, spread: float | None, batch: int, **extra: Any) -> None:
        flops = count_flops(self.arch, SQUARE, batch)["transformer"]
        self.results.row(
            key,
            step_ms=1e3 * seconds,
            tflops=flops / seconds / 1e12,
            ratio=seconds / (flops / (self.peak * 1e12)),
            spread=spread,
            **extra,
        )

    def section_cold(self) -> str:
        """Start-up as a worker does it: build the pipe (random weights, standing in for loading from disk, which is
        not measured here), apply the fast path, warm all nine buckets with the ControlNet. First this process warms
        the eight other buckets (the empty-cache compile of the 3 new token counts; 1024² was compiled by `t2i`),
        then a fresh process restarts on the now warm compile cache (`<data dir>/compile-cache`)."""
        self.need(80, "cold")
        pipe = self.fast_path()
        start = time.perf_counter()
        warm = fast.warm_buckets(pipe, [scaled(size) for size in SIZES.values()], conditions=1)
        first = time.perf_counter() - start
        slowest = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(warm.items(), key=lambda kv: -kv[1])[:4])
        self.results.note(
            "cold start, empty cache (this process)",
            f"warming the 9 buckets with the ControlNet after 1024² T2I was compiled: {first:.1f}s (slowest: "
            f"{slowest}); with an empty cache add the first compile in 'fast path'",
        )
        spec = {"kind": "pipe", "options": self.options_spec(), "data_dir": str(self.settings.data_dir)}
        report = self.run_child("restart", spec, 150, expect_s=45)
        self.results.note("cold start, restart with a warm compile cache", self.start_text(report))
        return self.start_text(report)

    def section_dynamic(self) -> str:
        """`dynamic=True` (one graph for every token count and batch) vs static shapes: a first start with an empty
        cache of its own and, if the budget allows, a restart on it; the 1024² step time against static."""
        static_ms = self.static_step_ms()
        data_dir = self.work / "data-dynamic"
        shutil.rmtree(data_dir, ignore_errors=True)
        spec = {"kind": "pipe", "options": self.options_spec(dynamic=True), "data_dir": str(data_dir), "step": True}
        first = self.run_child("dynamic, empty cache", spec, 150, expect_s=75)
        self.results.note("dynamic shapes, first start (empty cache)", self.start_text(first))
        if "step_s" in first:
            self.step_row(
                f"{self.size_key(SQUARE)} t2i fast step, dynamic shapes",
                first["step_s"],
                first.get("step_spread"),
                2,
                note=f"{static_ms / (1e3 * first['step_s']):.2f}x vs static",
            )
        restart = self.run_child("dynamic, warm cache", {**spec, "step": False}, 120, expect_s=40)
        self.results.note("dynamic shapes, restart with a warm cache", self.start_text(restart))
        return self.start_text(restart)

    def section_modes(self) -> None:
        """Compile modes and inductor settings against today's (default mode, static shapes), each in a fresh
        process with only the transformer, capped (`--mode-cap`): the step time at 1024² and the compile time. A
        mode whose autotuning outlasts the cap is stopped and its row says so."""
        static_ms = self.static_step_ms()
        for index, (name, mode, inductor) in enumerate(COMPILE_VARIANTS):
            key = f"{self.size_key(SQUARE)} t2i fast step, {name}"
            self.gate(key)
            data_dir = self.work / f"data-mode-{index}"
            shutil.rmtree(data_dir, ignore_errors=True)  # the compile time with an empty cache
            options = self.options_spec(compile_mode=mode, inductor=sorted(inductor.items()))
            spec = {"kind": "transformer", "options": options, "data_dir": str(data_dir)}
            report = self.run_child(name, spec, self.args.mode_cap, expect_s=60)
            if "step_s" in report:
                note = f"{static_ms / (1e3 * report['step_s']):.2f}x vs default; compile {report['compile_s']:.1f}s"
                self.step_row(key, report["step_s"], report.get("step_spread"), 2, note=note)
            else:
                reached = report.get("stage", "start")
                self.results.row(
                    key, skipped_reason=f"{report.get('stopped', 'no result')} (reached: {reached}); not measured"
                )
            if report.get("dropped"):
                self.results.row(key, error=f"settings unknown to this torch, left out: {report['dropped']}")

    def options_spec(self, **overrides: Any) -> dict[str, Any]:
        return dataclasses.asdict(self.options(**overrides))

    @staticmethod
    def start_text(report: dict[str, Any]) -> str:
        parts = [f"{report['total_s']:.1f}s in all" if "total_s" in report else "did not finish"]
        labels = {"imports_s": "imports", "build_s": "build", "apply_s": "fast path", "warm_s": "warm 9 buckets"}
        for key, label in labels.items():
            if key in report:
                parts.append(f"{label} {report[key]:.1f}s")
        if report.get("stopped"):
            parts.append(f"{report['stopped']} at stage {report.get('stage', 'start')}")
        return "; ".join(parts)

    # issue 19: each change as its own row

    def section_nosync(self) -> None:
        """Item 1. The default request (no listener: no preview, no sync inside the loop) against the same request
        with a device sync and a preview at every step boundary (what the per-step preview copy cost before) and
        with a preview of every step made the new way (on the device, copied without blocking). Also counts the
        syncs torch sees inside the step loop (`torch.cuda.set_sync_debug_mode`)."""
        self.fast_path()
        steps, key = self.short_steps, self.size_key(SQUARE)
        rows = [
            ("fast, no listener", NullHooks(), f"syncs inside the loop: {self.loop_syncs()}"),
            ("fast, preview every step", PreviewEveryStep(), "previews computed on the device, copied async"),
            ("fast, sync + preview every step", SyncEveryStep(self.device), "before item 1 (emulated)"),
        ]
        for path, hooks, note in rows:
            row = f"{key} t2i {path}"
            self.try_row(row, lambda r=row, h=hooks, n=note: self.image_row(r, SQUARE, "t2i", steps, h, note=n))

    def loop_syncs(self) -> str:
        """Device syncs inside the step loop of one 3-step request, as `set_sync_debug_mode` reports them (counted
        between the first and the last cancel check: the loop's boundaries)."""
        if self.device.type != "cuda":
            return "n/a on CPU"
        hooks = CountingHooks()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hooks.caught = caught
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run_image(self.pipe, SQUARE, "t2i", 3, hooks)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return str(hooks.marks[-1] - hooks.marks[0]) if len(hooks.marks) > 1 else "?"

    def section_graphs(self) -> None:
        """Item 4. The transformer and ControlNet forwards replayed from CUDA graphs (`fast.enable_cuda_graphs`),
        T2I and canny+depth at 1024²; rel err against the fast rows' latents."""
        pipe = self.fast_path()
        steps, key = self.short_steps, self.size_key(SQUARE)
        if self.device.type != "cuda":
            for task in TASKS:
                self.results.row(f"{key} {task} fast + CUDA graphs", skipped_reason="CUDA graphs need CUDA")
            return
        for task in TASKS:
            self.fast_reference(task, steps)  # the rows' yardstick: the fast latents at these steps
        fast.enable_cuda_graphs(pipe)
        try:
            for task in TASKS:
                row = f"{key} {task} fast + CUDA graphs"
                self.gate(row)
                start = time.perf_counter()
                run_image(pipe, SQUARE, task, 2)  # captures this task's graphs
                capture_s = time.perf_counter() - start
                note = f"rel err vs fast; first run (capture) {capture_s:.1f}s"
                self.try_row(row, lambda r=row, t=task, n=note: self.image_row(
                    r, SQUARE, t, steps, rel_err_vs="fast", note=n))  # fmt: skip
        finally:
            fast.disable_cuda_graphs(pipe)

    def section_control1(self) -> None:
        """Item 2. Canny+depth with both conditions in one ControlNet forward (the default) against one forward per
        condition (`BriaMultiControlNetModel.batch_conditions = False`, the code before)."""
        pipe = self.fast_path()
        steps, key = self.short_steps, self.size_key(SQUARE)
        batched = f"{key} canny+depth fast"
        if batched not in self.results.data["rows"] or "step_ms" not in self.results.data["rows"][batched]:
            fast.warm_buckets(pipe, [scaled(SQUARE)], conditions=2)
            self.try_row(batched, lambda: self.image_row(batched, SQUARE, "canny+depth", steps))
        row = f"{key} canny+depth fast, one ControlNet forward per condition"
        self.gate(row)
        pipe.controlnet.batch_conditions = False
        try:
            start = time.perf_counter()
            fast.warm_buckets(pipe, [scaled(SQUARE)], conditions=1, vae=False)
            warm_s = time.perf_counter() - start
            self.try_row(row, lambda: self.image_row(row, SQUARE, "canny+depth", steps, rel_err_vs="fast"))
        finally:
            pipe.controlnet.batch_conditions = True
        one = self.results.data["rows"].get(batched, {}).get("step_ms")
        each = self.results.data["rows"].get(row, {}).get("step_ms")
        gain = f"one forward for both: x{each / one:.3f} per step; " if one and each else ""
        self.results.row(row, note=f"{gain}rel err vs one forward; ControlNet warm {warm_s:.1f}s; "
                         f"{self.projected(steps)}".rstrip("; "))  # fmt: skip

    def section_fp8scale(self) -> None:
        """Item 7. FP8 with per-row and with per-tensor scales on the same weights: one transformer forward at 1024²
        under CFG (random inputs), its time and its relative error against the fast forward; then undone."""
        pipe = self.fast_path()
        key = self.size_key(SQUARE)
        rows = {scaling: f"{key} t2i one forward fp8 per-{scaling}" for scaling in ("row", "tensor")}
        if not fast.fp8_supported(self.device):
            for row in rows.values():
                self.results.row(row, skipped_reason=f"fp8 needs CUDA sm89+, not {self.device.type}")
            return
        models = fast.denoisers(pipe)
        transformer = models[0]
        inputs = random_step_inputs(transformer, scaled(SQUARE), 2, seed=2)
        flops = count_flops(self.arch, SQUARE, 2)["transformer"]
        floor = flops / (self.peak * 1e12)
        fast_out = transformer(**inputs, return_dict=False)[0].float()
        seconds, spread = time_forward(transformer, inputs, 5)
        self.results.row(
            f"{key} t2i one forward fast", step_ms=1e3 * seconds, ratio=seconds / floor, spread=spread,
            tflops=flops / seconds / 1e12, note="the fp8 rows' reference: same weights and inputs",
        )  # fmt: skip
        saved = linear_weights(models)
        for scaling, row in rows.items():
            self.gate(row)

            def measure_fp8(scaling: str = scaling, row: str = row) -> None:
                try:
                    fast.enable_fp8(models, scaling=scaling)
                    start = time.perf_counter()
                    out = transformer(**inputs, return_dict=False)[0].float()  # compiles
                    sync(self.device)
                    compile_s = time.perf_counter() - start
                    fp8_s, fp8_spread = time_forward(transformer, inputs, 5)
                    if not bool(torch.isfinite(out).all()):
                        raise RowFailed("the fp8 forward is not finite")
                    self.results.row(
                        row, step_ms=1e3 * fp8_s, ratio=fp8_s / floor, spread=fp8_spread,
                        tflops=flops / fp8_s / 1e12, rel_err=self.rel_err(out, fast_out),
                        note=f"x{seconds / fp8_s:.2f} vs fast; rel err vs the fast forward; first call "
                        f"{compile_s:.1f}s",
                    )  # fmt: skip
                finally:
                    restore_linear_weights(saved)
                    for model in models:
                        model._reimagine_fp8 = False

            self.try_row(row, measure_fp8)

    def section_pair(self) -> None:
        """Item 8. Two T2I requests of the same size in one batch (`pipeline.generate_batch`, each with its own
        seed) against one request alone, 1024², short steps; images/hour projected to `--steps`."""
        from reimagine.worker.pipeline import generate_batch

        pipe = self.fast_path()
        steps, key = self.short_steps, self.size_key(SQUARE)
        single = f"{key} t2i fast, no listener"
        if "step_ms" not in self.results.data["rows"].get(single, {}):
            self.try_row(single, lambda: self.image_row(single, SQUARE, "t2i", steps))
        row = f"{key} t2i fast, 2 requests in one batch"
        self.gate(row)
        start = time.perf_counter()
        fast.warm_buckets(pipe, [scaled(SQUARE)], batch=4, conditions=0, vae=False)
        warm_s = time.perf_counter() - start

        def requests(n_steps: int) -> list[Any]:
            from reimagine.schemas import ReimagineInput

            fields = {"prompt": "a photo of a red cat on a sofa", "prompt_enhancer": False}
            inputs = [
                ReimagineInput.model_validate({**fields, "seed": seed}).model_copy(
                    update={"num_inference_steps": n_steps}
                )
                for seed in (5555, 6666)
            ]
            return [(i, Controls(), NullHooks()) for i in inputs]

        def measure_pair() -> None:
            generate_batch(pipe, requests(2), _size=scaled(SQUARE))
            walls, results = [], []
            for _ in range(self.args.repeat):
                sync(self.device)
                start = time.perf_counter()
                results = generate_batch(pipe, requests(steps), _size=scaled(SQUARE))
                sync(self.device)
                walls.append(time.perf_counter() - start)
            if not all(isinstance(r, Generated) for r in results):
                raise RowFailed(f"a batched request failed: {results}")
            best = min(walls)
            denoise = min(r.timings["denoise"] for r in results if isinstance(r, Generated))
            step_s = denoise / steps
            per_image = (best + step_s * (self.args.steps - steps)) / 2
            one = self.results.data["rows"].get(single, {}).get("images_per_hour")
            self.results.row(
                row, steps=steps, step_ms=1e3 * step_s, denoise_s=step_s * self.args.steps, image_s=per_image,
                images_per_hour=3600 / per_image, mem_gib=peak_memory_gib(self.device),
                note=(f"x{3600 / per_image / one:.2f} images/hour vs one request; " if one else "")
                + f"step = both requests; image s = wall / 2; batch-4 warm {warm_s:.1f}s; {self.projected(steps)}"
                .rstrip("; "),
            )  # fmt: skip

        self.try_row(row, measure_pair)


class PreviewEveryStep(NullHooks):
    """A listener that wants a preview of every step (the playground at `preview_interval_s` 0)."""

    def wants_preview(self, step: int, total: int) -> bool:
        return True


class SyncEveryStep(PreviewEveryStep):
    """The cost the step loop had before issue 19 item 1: a preview of every step and the device drained at every
    step boundary (the old preview's `.cpu()` copy), so the next step's launches waited for the host."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def check_cancelled(self) -> None:
        sync(self.device)


class CountingHooks(NullHooks):
    """Marks how many sync warnings were caught at each step boundary (`caught` is set by the caller)."""

    def __init__(self) -> None:
        self.caught: list[Any] = []
        self.marks: list[int] = []

    def check_cancelled(self) -> None:
        self.marks.append(sum("synchroniz" in str(w.message) for w in self.caught))


#: name, mode, inductor settings of the `modes` rows. flux-fast's settings (huggingface/flux-fast); a narrowed
#: max-autotune: Triton GEMM templates vs cuBLAS once per shape, without coordinate descent or epilogue benchmarks.
COMPILE_VARIANTS: list[tuple[str, str | None, dict[str, Any]]] = [
    (
        "flux-fast inductor settings",
        None,
        {
            "conv_1x1_as_mm": True,
            "epilogue_fusion": False,
            "coordinate_descent_tuning": True,
            "coordinate_descent_check_all_directions": True,
        },
    ),
    (
        "max-autotune-no-cudagraphs, narrowed",
        "max-autotune-no-cudagraphs",
        {
            "coordinate_descent_tuning": False,
            "max_autotune_pointwise": False,
            "max_autotune_gemm_backends": "ATEN,TRITON",
            "max_autotune_gemm_search_space": "DEFAULT",
            "benchmark_epilogue_fusion": False,
            "autotune_num_choices_displayed": 0,
        },
    ),
]


def time_call(fn: Any, repeat: int, device: torch.device) -> tuple[float, float]:
    """Median seconds of `fn()` over `repeat` calls (the caller has run it once), and the spread."""
    seconds = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return median, (max(seconds) - min(seconds)) / median


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the bench process dies, whatever kills that."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop_group(child: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGINT, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


@torch.no_grad()
def child_main(spec: dict[str, Any]) -> int:
    """One start-up in this fresh process, reported to `spec["report"]` after every stage: "pipe" builds the whole
    pipe, applies the fast path and warms all nine buckets with the ControlNet (a worker's start); "transformer"
    builds the transformer alone and compiles its blocks with the given mode and settings (a compile-mode row)."""
    global SCALE
    SCALE = spec["scale"]
    quiet_libraries()
    report: dict[str, Any] = {"stage": "imports", "imports_s": time.monotonic() - T0}
    report_file = Path(spec["report"])

    def stage(name: str, **values: Any) -> None:
        report.update(values, stage=name)
        report_file.write_text(json.dumps(report))

    stage("imports")
    device = torch.device(spec["device"])
    arch = TINY if spec["tiny"] else FULL
    options = spec["options"]
    inductor = [tuple(item) for item in options.pop("inductor")]
    known = set(_inductor_config_keys())
    report["dropped"] = [key for key, _ in inductor if key not in known]
    options["inductor"] = tuple((key, value) for key, value in inductor if key in known)
    options = fast.FastOptions(**options)
    settings = Settings(data_dir=Path(spec["data_dir"]), fp8=False, step_cache=0.0)  # type: ignore[call-arg]
    start = time.perf_counter()
    if spec["kind"] == "pipe":
        pipe = build_pipe(arch, device, settings)
        sync(device)
        stage("built", build_s=time.perf_counter() - start)
        mark = time.perf_counter()
        fast.apply_fast_path(pipe, settings, options=options)
        stage("fast path", apply_s=time.perf_counter() - mark)
        transformer = fast.denoisers(pipe)[0]
        mark = time.perf_counter()
        warm: dict[str, float] = {}
        for size in SIZES.values():
            warm |= fast.warm_buckets(pipe, [scaled(size)], conditions=1)
            stage(f"warm {size[0]}x{size[1]}", warm=warm)
        stage("warm", warm_s=time.perf_counter() - mark, total_s=time.monotonic() - T0)
    else:
        from reimagine.worker.controlnet_bria import BriaControlledTransformer2DModel

        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        with torch.device(device):
            torch.manual_seed(0)
            transformer = BriaControlledTransformer2DModel(**transformer_kwargs(arch)).to(dtype).eval()
        fast.fuse_qkv(transformer)
        fast.set_attention_backend([transformer], spec["attention"])
        sync(device)
        stage("built", build_s=time.perf_counter() - start)
        if options.compile != "none":
            fast.configure_compile_cache(settings.data_dir)
            fast.compile_model(transformer, how=options.compile, mode=options.compile_mode, inductor=options.inductor)
        inputs = random_step_inputs(transformer, scaled(SQUARE), 2)
        mark = time.perf_counter()
        transformer(**inputs, return_dict=False)
        sync(device)
        stage("compiled", compile_s=time.perf_counter() - mark, total_s=time.monotonic() - T0)
    if spec.get("step", spec["kind"] == "transformer"):
        inputs = random_step_inputs(transformer, scaled(SQUARE), 2)
        seconds, spread = time_forward(transformer, inputs, 10 if device.type == "cuda" else 2)
        stage("timed", step_s=seconds, step_spread=spread)
    stage("done")
    return 0


def _inductor_config_keys() -> list[str]:
    import torch._inductor.config as inductor_config

    return list(inductor_config.get_config_copy())


# --- the run ---------------------------------------------------------------------------------------------------------


def quiet_libraries() -> None:
    """Library warnings (the default negative prompt's truncation, experimental-API notices) would flood the output
    tail the GPU tool returns: off. Errors still print."""
    warnings.filterwarnings("ignore")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("torch._inductor").setLevel(logging.ERROR)


def arm_budget(budget_s: float) -> None:
    """SIGINT to this process at `budget_s` from start (the bench's own stop, before the tool's limit)."""
    if not math.isfinite(budget_s):
        return

    def interrupt(signum: int, frame: Any) -> None:
        print(f"[budget] {budget_s:.0f}s reached: interrupting", flush=True)
        signal.raise_signal(signal.SIGINT)

    signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, max(0.01, budget_s - Bench.elapsed()))


def run(bench: Bench, only: list[str]) -> int:
    """The sections in the order given, each isolated. 0: all ran (or stopped at the deadline); 1: a section or
    row failed; 3: interrupted (the budget's SIGINT)."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.fail_on_recompile_limit_hit = True  # else it silently runs eager under a "fast" label
    handler = signal.getsignal(signal.SIGINT)
    try:
        return _run_sections(bench, only)
    finally:
        signal.signal(signal.SIGINT, handler)


def _run_sections(bench: Bench, only: list[str]) -> int:
    for index, name in enumerate(only):
        start = time.perf_counter()
        try:
            bench.gate(f"section {name}")
            print(f"[{name}] start at {bench.elapsed():.0f}s (expected ~{SECTIONS[name][0]}s on an H200)", flush=True)
            with torch.no_grad():
                said = getattr(bench, f"section_{name}")()
            status = f"done in {time.perf_counter() - start:.1f}s" + (f": {said}" if said else "")
        except DeadlinePassed as exc:
            status = str(exc)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second one must not break the write below
            bench.results.section(name, f"interrupted after {time.perf_counter() - start:.1f}s (SIGINT / budget)")
            for rest in only[index + 1 :]:
                bench.results.section(rest, "not started: interrupted")
            return 3
        except Exception as exc:
            traceback.print_exc()
            bench.failed.append(name)
            status = f"FAILED after {time.perf_counter() - start:.1f}s: {type(exc).__name__}: {str(exc)[:300]}"
        bench.results.section(name, status)
        print(f"[{name}] {status}", flush=True)
    return 1 if bench.failed else 0


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny configs (CPU smoke run)")
    parser.add_argument("--steps", type=int, default=30, help="steps of the headline rows (eager/fast T2I)")
    parser.add_argument("--short-steps", type=int, default=10, help="steps of rows that need the per-step time")
    parser.add_argument("--out", default=None, help="RESULTS.md, results.json, speed.png (default: bench/ on a GPU)")
    parser.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "reimagine-speed"),
        help="scratch dir: reference latents (relative errors across runs) and the inductor cache",
    )
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma list, run in order, of {list(SECTIONS)}")
    parser.add_argument("--deadline", type=float, default=math.inf, help="no section or row starts after S seconds")
    parser.add_argument("--budget", type=float, default=math.inf, help="SIGINT itself at S seconds from start")
    parser.add_argument("--device", default="")
    parser.add_argument("--warmup", type=int, default=1, help="2-step runs before each timed row")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per row (2 GPU, 1 tiny)")
    parser.add_argument("--compile", choices=["regional", "full", "none"], default=None)
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune")
    parser.add_argument("--dynamic", action="store_true", help="one dynamic-shape graph instead of one per bucket")
    parser.add_argument("--fullgraph", action="store_true", help="make a graph break an error")
    parser.add_argument("--attention", default="auto", help="diffusers attention backend or auto")
    parser.add_argument("--scale", type=int, default=None, help="divide each image side by this (default 4 tiny, 1)")
    parser.add_argument("--cache-threshold", type=float, default=0.05)
    parser.add_argument("--mode-cap", type=float, default=150, help="seconds a compile-mode child may take")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (1 if args.tiny else 2)
    args.scale = args.scale or (4 if args.tiny else 1)
    if args.out is None:  # a CPU run never overwrites the GPU figures in bench/
        args.out = str(Path(args.work) / "out") if args.tiny or not torch.cuda.is_available() else str(ROOT / "bench")
    global SCALE
    SCALE = args.scale
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    return args, only


def main(argv: list[str] | None = None) -> int:
    args, only = parse_args(argv)
    quiet_libraries()
    arm_budget(args.budget)
    bench: Bench | None = None
    try:
        bench = Bench(args, only)
        code = run(bench, only)
    except KeyboardInterrupt:
        code = 3
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if bench is None:
        print("interrupted before the first section", flush=True)
        return code
    print(f"\nresults in {args.out} after {bench.elapsed():.0f}s; sections:", flush=True)
    for name, status in bench.results.data["sections"].items():
        print(f"  {name}: {status}")
    if bench.failed:
        print(f"FAILED: {', '.join(bench.failed)}")
    print("\n" + "\n".join(bench.results.ratio_lines()), flush=True)  # last: the tool returns the output's tail
    return code


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:  # a fresh process of `Bench.run_child`
        sys.exit(child_main(json.loads(sys.argv[2])))
    sys.exit(main())
