"""Speed against the compute floor (issue 7): Bria 3.2 + ControlNet-Union, random weights, one command.

    python bench/speed.py                            # GPU, full size, every section (~20 min on an H100)
    python bench/speed.py --only peak,t2i,control    # a part; results merge into the same RESULTS.md
    python bench/speed.py --tiny --steps 1 --out /tmp/x   # CPU smoke run (CI), tiny configs, same code

Builds the full-size transformer (8+28 blocks), the ControlNet-Union (4 double + 10 single blocks, the
`from_transformer` default, since the released config is unpublished), the SDXL VAE and T5-XXL with random
weights on the device; measures the bf16 matmul peak and copy bandwidth, then eager diffusers vs
`reimagine.worker.fast` per section. Floor = (transformer + ControlNet FLOPs of the 30-step CFG denoise loop,
counted by `FlopCounterMode` on the meta device) / measured peak; the ratio is the measured denoise-loop time
over the floor (T5 and VAE are timed and reported separately). `RESULTS.md`, `results.json` and `speed.png`
are rewritten in `--out` after every measurement, so a run cut short keeps what it measured.

Sections: peak, t2i, control (canny+depth), ablate (one fast-path step at a time), sizes, batch, cache, fp8, cold.
On a lent GPU machine: `bench/speed_gpu.sh` (wheels to carry, one command per group of sections).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from reimagine.config import Settings  # noqa: E402
from reimagine.schemas import SIZES  # noqa: E402
from reimagine.worker import fast  # noqa: E402
from reimagine.worker.random_full import (  # noqa: E402
    FULL,
    TINY,
    build_components,
    controlnet_kwargs,
    transformer_kwargs,
)

SECTIONS = ["peak", "t2i", "control", "ablate", "sizes", "batch", "cache", "fp8", "cold"]
TASKS = {"t2i": [], "canny+depth": [("depth", 0), ("canny", 1)]}  # condition name -> ControlNet-Union mode
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


def run_image(pipe: Any, size: tuple[int, int], task: str, steps: int) -> dict:
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
        out = generate(pipe, inputs, controls, NullHooks(), _size=scaled(size))
        sync(pipe.device)
        wall = time.perf_counter() - start
    finally:
        del vae.decode
    return {"times": {**out.timings, "image": wall}, "latents": captured["latents"]}


def measure(pipe: Any, size: tuple[int, int], task: str, args: argparse.Namespace) -> dict:
    """Warm-up then `--repeat` timed runs; the fastest run's phases (the least disturbed one)."""
    device = pipe.device
    for _ in range(args.warmup):
        fast.reset_step_cache(pipe)
        run_image(pipe, size, task, args.steps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs = []
    for _ in range(args.repeat):
        fast.reset_step_cache(pipe)
        runs.append(run_image(pipe, size, task, args.steps))
    best = min(runs, key=lambda r: r["times"]["image"])
    best["skipped"] = fast.step_cache_skips(pipe)
    best["mem_gib"] = peak_memory_gib(device)
    return best


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process RSS (KiB on Linux)


# --- FLOPs, peak, floor ----------------------------------------------------------------------------------------------


def count_flops(arch: dict[str, Any], size: tuple[int, int], batch: int) -> dict[str, float]:
    """FLOPs of one transformer forward and one ControlNet forward (one condition) at `batch`, on the meta device;
    equals the analytic 24·D²·S + 4·S²·D per block of bria-model.md §7.1."""
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
    """bf16 matmul TFLOP/s (8192³ on CUDA; fp32 1024³ on CPU, the dtype the CPU path runs) and copy GB/s
    (bytes read + written)."""
    cuda = device.type == "cuda"
    n, dtype = (8192, torch.bfloat16) if cuda else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if cuda else 5
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    tflops = 2 * n**3 * reps / (time.perf_counter() - start) / 1e12
    src = torch.empty(2**28 if cuda else 2**24, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    sync(device)
    gbs = 2 * src.numel() * 4 * reps / (time.perf_counter() - start) / 1e9
    return {"peak_tflops": tflops, "peak_dtype": str(dtype).removeprefix("torch."), "copy_gbs": gbs}


# --- results ---------------------------------------------------------------------------------------------------------


def _row_order(key: str) -> tuple[bool, int, bool, int]:
    """Rows by section, 1024² first then the other buckets, T2I before canny+depth, eager -> lossless -> lossy;
    ablation rows last, in the order they were taken (a stable sort keeps it)."""
    if key.startswith("ablate"):
        return (True, 0, False, 0)
    sizes = [f"{w}x{h}" for w, h in [SQUARE, *(s for s in SIZES.values() if s != SQUARE)]]
    size = next((i for i, s in enumerate(sizes) if key.startswith(f"{s} ")), len(sizes))
    path = key.split(" ", 2)[-1]
    ranks = ["eager", "lossless", "step at batch", "step-cache", "fp8"]
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
        self.data["meta"].update(meta)
        command = "python bench/speed.py " + " ".join(sys.argv[1:])
        self.data["meta"]["commands"] = [*self.data["meta"].get("commands", []), command][-12:]

    def row(self, key: str, **values: Any) -> None:
        self.data["rows"][key] = {**self.data["rows"].get(key, {}), **values}
        self.write()

    def note(self, key: str, text: str) -> None:
        self.data["notes"][key] = text
        self.write()

    def write(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1))
        (self.out / "RESULTS.md").write_text(self.markdown())
        self.chart()

    def markdown(self) -> str:
        m, rows = self.data["meta"], self.data["rows"]
        lines = ["# Speed against the compute floor (bench/speed.py)", ""]
        if m.get("tiny"):
            lines += [
                "> **CPU tiny smoke run: no GPU was available.** Tiny random-weight configs on a CPU; the figures",
                "> below are NOT GPU figures and say nothing about serving speed. On a GPU: `python bench/speed.py`",
                "> (a lent machine: `bench/speed_gpu.sh`).",
                "",
            ]
        lines += [
            f"- device: {m.get('device')}; date: {m.get('date')}",
            f"- torch {m.get('torch')}; diffusers {m.get('diffusers')}",
            "- commands: " + "; ".join(f"`{c}`" for c in m.get("commands", [])),
            f"- config: {'tiny' if m.get('tiny') else 'full size'}, {m.get('steps')} steps, CFG 5, 128 text tokens, "
            "ControlNet-Union 4 double + 10 single blocks (tiny: 1 + 1), conditions at scale 0.5"
            + (f"; images generated at 1/{m['scale']} of each bucket's side" if m.get("scale", 1) > 1 else ""),
            "- mem GiB: peak CUDA memory allocated (on CPU: the process's peak RSS)",
        ]
        if "peak_tflops" in m:
            lines.append(
                f"- measured matmul peak: {m['peak_tflops']:.1f} TFLOP/s ({m['peak_dtype']}); "
                f"copy bandwidth: {m['copy_gbs']:.0f} GB/s"
            )
        lines += [
            "- floor = (transformer + ControlNet FLOPs of the denoise loop) / matmul peak; ratio = measured "
            "denoise-loop time / floor; T5 + control-image VAE encode (column encode) and the VAE decode are timed "
            "separately; image = wall time of `pipeline.generate` (T5, encode, denoise, decode, previews).",
            "",
        ]
        rows = dict(sorted(rows.items(), key=lambda item: _row_order(item[0])))  # stable: ablation order kept
        lines += ["## Ratios to the floor", "", "```"]
        for key, r in rows.items():
            if "ratio" in r:
                lines.append(f"ratio_to_floor {key}: {r['ratio']:.2f}x")
            elif "skipped_reason" in r:
                lines.append(f"ratio_to_floor {key}: n/a ({r['skipped_reason']})")
        lines += ["```", "", "## Measurements", ""]
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
            "mem GiB",
            "rel err",
            "images/h",
            "note",
        ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

        def f(value: Any, spec: str) -> str:
            return "" if value is None else format(value, spec)

        for key, r in rows.items():
            lines.append(
                "| "
                + " | ".join(
                    [
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
                        f(r.get("mem_gib"), ".1f"),
                        f(r.get("rel_err"), ".2e"),
                        f(r.get("images_per_hour"), ".0f"),
                        r.get("note", r.get("skipped_reason", "")),
                    ]
                )
                + " |"
            )
        if self.data["notes"]:
            lines += ["", "## Notes", ""] + [f"- **{k}**: {v}" for k, v in self.data["notes"].items()]
        return "\n".join(lines) + "\n"

    def chart(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = {k: r for k, r in self.data["rows"].items() if "denoise_s" in r and "floor_s" in r}
        if not rows:
            return
        fig, ax = plt.subplots(figsize=(11, 4.5))
        labels = list(rows)
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], [r["floor_s"] for r in rows.values()], 0.4, label="floor (FLOPs / peak)")
        ax.bar([x + 0.2 for x in xs], [r["denoise_s"] for r in rows.values()], 0.4, label="measured denoise loop")
        ax.set_xticks(list(xs), labels, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("seconds per image")
        ax.set_title(
            f"{self.data['meta'].get('device')}{' (CPU tiny smoke run)' if self.data['meta'].get('tiny') else ''}"
        )
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.out / "speed.png", dpi=110)
        plt.close(fig)


# --- sections --------------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
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
        self.state = "none"
        self.flops: dict[tuple[tuple[int, int], str, int], float] = {}

    @property
    def peak(self) -> float:
        if "peak_tflops" not in self.results.data["meta"]:
            self.section_peak()
        return float(self.results.data["meta"]["peak_tflops"])

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

    def ensure(self, state: str) -> Any:
        """The pipe in `state` ("eager" or "lossless"); eager -> lossless mutates in place, so build again for eager."""
        if self.state == state:
            return self.pipe
        if state == "eager" or self.pipe is None or self.state not in ("eager",):
            self.pipe = None
            torch._dynamo.reset()  # compiled blocks keep the old modules alive
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            start = time.perf_counter()
            self.pipe = build_pipe(self.arch, self.device, self.settings)
            sync(self.device)
            self.build_s = time.perf_counter() - start
            self.state = "eager"
        if state == "lossless":
            fast.apply_fast_path(self.pipe, self.settings, options=self.options())
            self.state = "lossless"
        return self.pipe

    def record(self, key: str, size: tuple[int, int], task: str, run: dict, **extra: Any) -> None:
        flops_key = (size, task, 1)
        if flops_key not in self.flops:
            self.flops[flops_key] = image_flops(self.arch, size, task, self.args.steps)
        flops = self.flops[flops_key]
        tm = run["times"]
        floor = flops / (self.peak * 1e12)
        self.results.row(
            key,
            pflop=flops / 1e15,
            floor_s=floor,
            denoise_s=tm["denoise"],
            step_ms=1e3 * tm["denoise"] / self.args.steps,
            encode_s=tm["encode"],
            decode_s=tm["decode"],
            image_s=tm["image"],
            tflops=flops / tm["denoise"] / 1e12,
            ratio=tm["denoise"] / floor,
            mem_gib=run["mem_gib"],
            images_per_hour=3600 / tm["image"],
            **extra,
        )
        print(
            f"{key}: denoise {tm['denoise']:.3f}s image {tm['image']:.3f}s ratio {tm['denoise'] / floor:.2f}x {extra}",
            flush=True,
        )

    def reference(self, size: tuple[int, int], task: str, path: str) -> torch.Tensor | None:
        file = self.ref_file(size, task, path)
        return torch.load(file) if file.exists() else None

    def save_reference(self, size: tuple[int, int], task: str, path: str, latents: torch.Tensor) -> None:
        torch.save(latents, self.ref_file(size, task, path))

    def ref_file(self, size: tuple[int, int], task: str, path: str) -> Path:
        arch = "tiny" if self.args.tiny else "full"
        return self.work / f"ref-{arch}-{self.device.type}-{self.args.steps}steps-{size[0]}x{size[1]}-{task}-{path}.pt"

    def lossless_reference(self, task: str) -> torch.Tensor:
        """The lossless path's final latents at 1024² (from an earlier section, else measured now)."""
        latents = self.reference(SQUARE, task, "lossless")
        if latents is None:
            pipe = self.ensure("lossless")
            fast.warm_buckets(pipe, [scaled(SQUARE)], conditions=len(TASKS[task]))
            latents = run_image(pipe, SQUARE, task, self.args.steps)["latents"]
            self.save_reference(SQUARE, task, "lossless", latents)
        return latents

    @staticmethod
    def rel_err(a: torch.Tensor, b: torch.Tensor | None) -> float | None:
        return None if b is None else float((a - b).norm() / b.norm().clamp_min(1e-12))

    def size_key(self, size: tuple[int, int]) -> str:
        return f"{size[0]}x{size[1]}"

    # sections

    def section_peak(self) -> None:
        peak = measure_peak(self.device)
        self.results.data["meta"].update(peak)
        self.results.write()
        print(f"peak: {peak}", flush=True)

    def section_task(self, task: str) -> None:
        """Eager diffusers vs the lossless fast path at 1024², one task; relative error of the final latents."""
        key = self.size_key(SQUARE)
        run = measure(self.ensure("eager"), SQUARE, task, self.args)
        self.save_reference(SQUARE, task, "eager", run["latents"])
        self.record(
            f"{key} {task} eager",
            SQUARE,
            task,
            run,
            note="bf16, SDPA, no compile" if self.device.type == "cuda" else "fp32",
        )
        start = time.perf_counter()
        pipe = self.ensure("lossless")
        warm = fast.warm_buckets(pipe, [scaled(SQUARE)], conditions=len(TASKS[task]))
        setup_s = time.perf_counter() - start
        run = measure(pipe, SQUARE, task, self.args)
        self.save_reference(SQUARE, task, "lossless", run["latents"])
        self.note_compile()
        err = self.rel_err(run["latents"], self.reference(SQUARE, task, "eager"))
        eager = self.results.data["rows"][f"{key} {task} eager"]["denoise_s"]
        self.record(
            f"{key} {task} lossless",
            SQUARE,
            task,
            run,
            rel_err=err,
            note=f"{eager / run['times']['denoise']:.2f}x vs eager; apply+warm {setup_s:.1f}s "
            f"({warm[self.size_key(scaled(SQUARE))]:.1f}s warm)",
        )

    def note_compile(self) -> None:
        from torch._dynamo.utils import counters

        breaks = sum(counters["graph_break"].values())
        reasons = "; ".join(list(counters["graph_break"])[:3])
        self.results.note(
            "compile",
            f"{self.options().compile} compile, mode {self.options().compile_mode}: {breaks} graph breaks"
            + (f" ({reasons})" if reasons else "")
            + f", {counters['stats'].get('unique_graphs', 0)} graphs",
        )

    def section_ablate(self) -> None:
        """One lossless step at a time on the same weights (T2I 1024²): eager, +fused QKV, +attention, +compile."""
        key = self.size_key(SQUARE)
        steps = [
            ("eager", None),
            (
                "+fused-qkv",
                self.options(attention="native", compile="none", cache_negative=False, vae_channels_last=False),
            ),
            ("+attention", self.options(compile="none", cache_negative=False, vae_channels_last=False)),
            ("+neg-cache", self.options(compile="none", vae_channels_last=False)),
            ("+vae-nhwc", self.options(compile="none")),
            (f"+compile ({self.options().compile})", self.options()),
        ]
        pipe = self.ensure("eager")
        for name, options in steps:
            if options is not None:
                fast.apply_fast_path(pipe, self.settings, options=options)
            fast.warm_buckets(pipe, [scaled(SQUARE)], conditions=0)
            run = measure(pipe, SQUARE, "t2i", self.args)
            self.results.row(
                f"ablate {key} t2i {name}",
                denoise_s=run["times"]["denoise"],
                encode_s=run["times"]["encode"],
                step_ms=1e3 * run["times"]["denoise"] / self.args.steps,
                image_s=run["times"]["image"],
            )
        self.state = "lossless"

    def section_sizes(self) -> None:
        """The fast path, T2I, at the other eight aspect buckets; images/hour per GPU."""
        pipe = self.ensure("lossless")
        for size in SIZES.values():
            if size == SQUARE:
                continue
            fast.warm_buckets(pipe, [scaled(size)], conditions=0)
            self.record(f"{self.size_key(size)} t2i lossless", size, "t2i", measure(pipe, size, "t2i", self.args))

    def section_batch(self) -> None:
        """Does batching two same-size requests raise throughput? One denoise step (transformer under CFG) at batch
        2 (one request) vs batch 4 (two requests), fast path, 1024²: the step is ~97% of an image's FLOPs."""
        pipe = self.ensure("lossless")
        size = scaled(SQUARE)
        seconds = {}
        for batch in (2, 4):
            fast.warm_buckets(pipe, [size], batch=batch, conditions=0, vae=False)  # compile / warm
            seconds[batch] = min(
                fast.warm_buckets(pipe, [size], batch=batch, conditions=0, vae=False)[self.size_key(size)]
                for _ in range(max(3, self.args.repeat))
            )
        gain = 2 * seconds[2] / seconds[4]
        key = self.size_key(SQUARE)
        for batch, requests in ((2, 1), (4, 2)):
            flops = count_flops(self.arch, SQUARE, batch)["transformer"]
            self.results.row(
                f"{key} t2i lossless step at batch {batch} ({requests} request{'s' if requests > 1 else ''})",
                step_ms=1e3 * seconds[batch],
                tflops=flops / seconds[batch] / 1e12,
                ratio=seconds[batch] / (flops / (self.peak * 1e12)),
                note=f"throughput x{gain:.2f} vs one request" if batch == 4 else "",
            )
        verdict = "batching raises throughput" if gain > 1.1 else "too little to pay for the added latency"
        self.results.note("batching", f"two 1024² requests in one batch: x{gain:.2f} denoise throughput; {verdict}.")

    def section_cache(self) -> None:
        """First-Block-Cache at `--cache-threshold` on top of the lossless path: speed and deviation."""
        pipe = self.ensure("lossless")
        references = {task: self.lossless_reference(task) for task in TASKS}
        fast.enable_step_cache(pipe, self.args.cache_threshold)
        try:
            for task in TASKS:
                run = measure(pipe, SQUARE, task, self.args)
                err = self.rel_err(run["latents"], references[task])
                self.record(
                    f"{self.size_key(SQUARE)} {task} step-cache",
                    SQUARE,
                    task,
                    run,
                    rel_err=err,
                    note=f"threshold {self.args.cache_threshold}, {run['skipped']}/{self.args.steps} steps "
                    "skipped; rel err vs lossless",
                )
        finally:
            fast.disable_step_cache(pipe)

    def section_fp8(self) -> None:
        """FP8 linears (torchao) on top of the lossless path; skipped, with the reason, where unsupported."""
        pipe = self.ensure("lossless")
        supported = fast.fp8_supported(self.device)
        references = {task: self.lossless_reference(task) if supported else None for task in TASKS}
        for task in TASKS:
            key = f"{self.size_key(SQUARE)} {task} fp8"
            if not fast.fp8_supported(self.device):
                self.results.row(key, skipped_reason=f"fp8 needs CUDA sm89+, not {self.device.type}")
                continue
            if self.state != "fp8":
                fast.enable_fp8(fast.denoisers(pipe))
                self.state = "fp8"
            fast.warm_buckets(pipe, [scaled(SQUARE)], conditions=len(TASKS[task]))
            run = measure(pipe, SQUARE, task, self.args)
            self.record(
                key,
                SQUARE,
                task,
                run,
                rel_err=self.rel_err(run["latents"], references[task]),
                note="rel err vs lossless",
            )

    def section_cold(self) -> None:
        """Start-up as a worker does it: `load_pipeline` from a local folder (the random weights, saved once to
        `--work`), the fast path, and warming all nine buckets. Run it as its own process, twice (`--only cold`):
        first with an empty compile cache, then as a restart with a warm one."""
        from reimagine.worker.pipeline import load_pipeline

        model_dir = self.work / f"model-{'tiny' if self.args.tiny else 'full'}-{self.device.type}"
        if not (model_dir / "controlnet" / "config.json").exists():
            pipe = self.ensure("eager")
            pipe.bria.save_pretrained(model_dir)
            pipe.controlnet.nets[0].save_pretrained(model_dir / "controlnet")
        disk_gb = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()) / 1e9
        self.pipe, self.state = None, "none"
        torch._dynamo.reset()
        gc.collect()
        cache = self.settings.data_dir / "compile-cache" / "inductor"  # fast.configure_compile_cache
        was_warm = cache.exists() and any(cache.iterdir())
        state = "no compile" if self.options().compile == "none" else f"{'warm' if was_warm else 'empty'} compile cache"
        settings = Settings(  # type: ignore[call-arg]
            model=str(model_dir), offline=True, data_dir=self.settings.data_dir, device=str(self.device)
        )
        sync(self.device)
        start = time.perf_counter()
        pipe = load_pipeline(settings)
        sync(self.device)
        load_s = time.perf_counter() - start
        if getattr(pipe, "_fast_options", None) is None:  # load_pipeline did not apply it itself
            fast.apply_fast_path(pipe, settings, options=self.options())
        warm = fast.warm_buckets(pipe, [scaled(size) for size in SIZES.values()], conditions=1)
        total = time.perf_counter() - start
        self.results.note(
            f"cold start ({state})",
            f"{total:.1f}s = load_pipeline {load_s:.1f}s ({disk_gb:.1f} GB from local disk, page cache as found) "
            f"+ fast path and warming 9 buckets {total - load_s:.1f}s (slowest bucket {max(warm.values()):.1f}s)",
        )
        self.pipe, self.state = pipe, "lossless"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny configs (CPU smoke run)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "bench"), help="where RESULTS.md, results.json, speed.png go")
    parser.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "reimagine-speed"),
        help="scratch dir: reference latents (relative errors across runs) and the inductor cache",
    )
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    parser.add_argument("--device", default="")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per measurement (3 GPU, 1 tiny)")
    parser.add_argument("--compile", choices=["regional", "full", "none"], default=None)
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune")
    parser.add_argument("--dynamic", action="store_true", help="one dynamic-shape graph instead of one per bucket")
    parser.add_argument("--fullgraph", action="store_true", help="make a graph break an error")
    parser.add_argument("--attention", default="auto", help="diffusers attention backend or auto")
    parser.add_argument("--scale", type=int, default=None, help="divide each image side by this (default 4 tiny, 1)")
    parser.add_argument("--cache-threshold", type=float, default=0.05)
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (1 if args.tiny else 3)
    args.scale = args.scale or (4 if args.tiny else 1)
    global SCALE
    SCALE = args.scale
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    bench = Bench(args)
    order = {
        "peak": bench.section_peak,
        "t2i": lambda: bench.section_task("t2i"),
        "control": lambda: bench.section_task("canny+depth"),
        "ablate": bench.section_ablate,
        "sizes": bench.section_sizes,
        "batch": bench.section_batch,
        "cache": bench.section_cache,
        "fp8": bench.section_fp8,
        "cold": bench.section_cold,
    }
    for name in SECTIONS:
        if name in only:
            start = time.perf_counter()
            with torch.no_grad():
                order[name]()
            print(f"[{name}] done in {time.perf_counter() - start:.1f}s", flush=True)
    if not math.isfinite(bench.results.data["meta"].get("peak_tflops", 0.0)):
        raise SystemExit("peak measurement failed")


if __name__ == "__main__":
    main()
