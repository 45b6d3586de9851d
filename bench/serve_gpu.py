"""The whole service on a GPU, measured end to end (issue 20): `reimagine serve --model random-full`, one command.

    bash bench/serve_gpu.sh --budget 200                    # a lent GPU machine (see the .sh for the wheels)
    python bench/serve_gpu.py --model tiny --budget 400 --clients 2 --extras '' --out /tmp/x    # CPU smoke run

Starts `reimagine serve` (one worker, SQLite, a fresh data directory, so the compile cache starts empty), drives it
over HTTP with bench/loadgen.py's keep-alive connections, and rewrites `SERVE_GPU.md` (a markdown table) and
`serve_gpu.json` in `--out` after every row, so a run cut short keeps what it measured. It stops itself before
`--budget` seconds: rows run in priority order, each only when its expected cost fits in what is left.

Rows: cold start with an empty compile cache (process start to /health/ready: model build, fast path, warm-up of
the aspect ratios readiness waits for, `--warmup-aspect-ratios`); the same request twice (same PNG bytes?); a
request that cannot fit (`--test-oom-seed`: 503 out_of_memory) and the next one; load through the queue
(`--clients` clients, T2I and canny+depth alternating, 1024², default inputs): images/hour, p50/p95
submit->COMPLETED, GPU busy fraction (denoise seconds over wall seconds), the worker's CPU seconds per image outside
the GPU (the results' `timings`), peak GPU memory per task (the requests' logs), the shortfall against bench/speed.py's
per-image time; a restart with the warm compile cache and the same request after it; then, budget permitting,
--deterministic across a restart, two workers on one GPU, --cpu-offload.

`random-full` has random weights: its images are noise; the figures are the real architectures' cost.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import hashlib
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import Connection  # noqa: E402

ENDPOINT = "/bria/reimagine/3.2"
REQUESTS = "/bria/reimagine/requests"
OOM_SEED = 424242
PROMPT = "a lighthouse on a cliff at dusk, dramatic clouds, photograph"
SAME_REQUEST = {"seed": 1234, "aspect_ratio": "1:1"}


# --- the server --------------------------------------------------------------------------------------------------


class Server:
    """`python -m reimagine.cli serve` on a free loopback port; its output goes to a log file and is scanned."""

    def __init__(self, args: argparse.Namespace, data_dir: Path, log: Path, *extra: str) -> None:
        self.args, self.data_dir, self.log_path, self.extra = args, data_dir, log, list(extra)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> float:
        """Start and wait for /health/ready; returns the seconds from process start to ready."""
        command = [
            self.args.python, "-m", "reimagine.cli", "serve", "--port", str(self.port),
            "--data-dir", str(self.data_dir), "--model", self.args.model, "--workers", "1",
            "--warmup-aspect-ratios", self.args.warmup, "--test-oom-seed", str(OOM_SEED),
            "--allow-hosts", "127.0.0.1", "--submit-rate-per-min", "0", "--log-level", "INFO",
            *self.args.serve_arg, *self.extra,
        ]  # fmt: skip
        started = time.monotonic()
        self.proc = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        threading.Thread(target=self._read, daemon=True).start()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("serve exited:\n" + "".join(self.lines[-40:]))
            if any(re.search(r"worker \d+ (cannot start|exited \(code)", line) for line in self.lines):
                # a worker that failed to load would be restarted until the budget's end: stop now, say why
                raise RuntimeError("a worker failed to start:\n" + "".join(self.lines[-40:]))
            if time.monotonic() > deadline():
                raise TimeoutError("serve not ready before the budget's end")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health/ready", timeout=2).status_code == 200:
                    return time.monotonic() - started
            time.sleep(0.1)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.log_path.open("a") as log:
            log.write(f"\n===== serve {' '.join(self.extra)} =====\n")
            for line in self.proc.stdout:
                self.lines.append(line)
                log.write(line)
                log.flush()

    def key(self) -> str | None:
        for previous, line in zip(self.lines, self.lines[1:], strict=False):
            if previous.startswith("Created the first API key"):
                return line.strip()
        return None

    def seconds_logged(self, pattern: str) -> float | None:
        """The first number a worker log line matching `pattern` (with one float group) reports."""
        for line in self.lines:
            found = re.search(pattern, line)
            if found:
                return float(found.group(1))
        return None

    def logged(self, pattern: str) -> str:
        found = [re.search(pattern, line) for line in self.lines]
        return next((match.group(1) for match in found if match), "")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # drains: the running job finishes
        try:
            self.proc.wait(timeout=max(3.0, min(30.0, left())))  # at the budget's end, no waiting for a drain
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- one request ---------------------------------------------------------------------------------------------------


class Client:
    """Submit, poll the status until COMPLETED, fetch the result (and the logs); one keep-alive connection."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.headers = url, {"Authorization": f"Key {key}"}
        self.conn = Connection(url, self.headers)

    def submit(self, body: dict[str, Any]) -> str:
        status, answer = self.conn.request("POST", ENDPOINT, body)
        if status != 200:
            raise RuntimeError(f"submit: {status} {answer[:300]!r}")
        request_id: str = json.loads(answer)["request_id"]
        return request_id

    def wait(self, request_id: str, until: float, poll_s: float = 0.05) -> bool:
        while time.monotonic() < until:
            status, answer = self.conn.request("GET", f"{REQUESTS}/{request_id}/status")
            if status == 200 and json.loads(answer)["status"] == "COMPLETED":
                return True
            time.sleep(poll_s)
        return False

    def result(self, request_id: str) -> tuple[int, dict[str, Any], list[str]]:
        status, answer = self.conn.request("GET", f"{REQUESTS}/{request_id}")
        _, logs = self.conn.request("GET", f"{REQUESTS}/{request_id}/status?logs=1")
        return status, json.loads(answer), [line["message"] for line in json.loads(logs).get("logs") or []]

    def cancel(self, request_id: str) -> None:
        self.conn.request("PUT", f"{REQUESTS}/{request_id}/cancel")

    def run(self, body: dict[str, Any]) -> dict[str, Any]:
        """One request to its end: status code, result, logs, seconds, and the image's bytes."""
        started = time.monotonic()
        request_id = self.submit(body)
        if not self.wait(request_id, deadline()):
            self.cancel(request_id)
            raise TimeoutError("request not done before the budget's end")
        seconds = time.monotonic() - started
        status, result, logs = self.result(request_id)
        image = b""
        if status == 200:
            image = httpx.get(result["image"]["url"], headers=self.headers, timeout=60).content
        return {"status": status, "result": result, "logs": logs, "seconds": seconds, "image": image}


def scene_data_uri(size: int = 1024) -> str:
    """A drawn scene (sky, ground, a house, a sun) as a PNG data URI: edges for canny, layers for depth."""
    image = Image.new("RGB", (size, size), (135, 190, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, size * 2 // 3, size, size], fill=(80, 140, 60))
    draw.rectangle([size // 3, size // 3, size * 2 // 3, size * 3 // 4], fill=(180, 80, 60))
    draw.polygon(
        [(size // 3 - 40, size // 3), (size // 2, size // 8), (size * 2 // 3 + 40, size // 3)], fill=(90, 50, 40)
    )
    draw.ellipse([size * 3 // 4, size // 10, size * 9 // 10, size // 4], fill=(250, 220, 90))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def peak_gib(logs: list[str]) -> float | None:
    for line in logs:
        found = re.search(r"peak GPU memory ([\d.]+) GiB", line)
        if found:
            return float(found.group(1))
    return None


def _gib(value: float | None) -> str:
    return "n/a (no CUDA)" if value is None else f"{value:.1f} GiB"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


# --- the report ----------------------------------------------------------------------------------------------------


class Report:
    """Rows of (what, value, note), rewritten to `SERVE_GPU.md` and `serve_gpu.json` after each one."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out, self.meta = out, meta
        self.rows: list[dict[str, str]] = []
        out.mkdir(parents=True, exist_ok=True)

    def row(self, what: str, value: Any, note: str = "") -> None:
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        self.rows.append({"what": what, "value": text, "note": note})
        print(f"[serve_gpu] {what}: {text}  {note}", flush=True)
        self.write()

    def write(self) -> None:
        (self.out / "serve_gpu.json").write_text(json.dumps({"meta": self.meta, "rows": self.rows}, indent=1))
        path = self.out / "SERVE_GPU.md"
        kept = ""
        if path.is_file() and "\n## Reading" in path.read_text():
            kept = "\n## Reading" + path.read_text().split("\n## Reading", 1)[1]
        m = self.meta
        banner = []
        if m["device"].startswith("CPU"):
            banner = [
                "> **CPU smoke run: no GPU was available.** Run on a CPU (model `tiny`); the figures say nothing about",
                "> serving speed. On a lent GPU: `bash bench/serve_gpu.sh` (bench/README.md has the call).",
                "",
            ]
        lines = [
            "# The whole service on a GPU (bench/serve_gpu.py)",
            "",
            *banner,
            f"- device: {m['device']}; date: {m['date']}; budget {m['budget_s']:.0f} s",
            f"- command: `{m['command']}`",
            f"- model: `{m['model']}` (random weights: the images are noise; the cost is the real architectures'); "
            f"{m['steps']} steps, CFG 5, 1024² (1:1); readiness waits for the aspect ratios `{m['warmup']}`; "
            "one worker, SQLite, local files; fast path on CUDA (compiled, bf16-tolerant)",
            "- load: clients alternate T2I and canny+depth (a drawn 1024² scene as a data URI, maps derived with the "
            "default preprocessing, scales 0.5); each client submits, polls the status every 50 ms until COMPLETED, "
            "fetches the result, submits again",
            "",
            "| measurement | value | note |",
            "|---|---|---|",
            *(f"| {_cell(r['what'])} | {_cell(r['value'])} | {_cell(r['note'])} |" for r in self.rows),
            "",
        ]
        path.write_text("\n".join(lines) + kept)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- budget --------------------------------------------------------------------------------------------------------

_DEADLINE = [float("inf")]


def deadline() -> float:
    return _DEADLINE[0]


def left() -> float:
    return deadline() - time.monotonic()


@contextlib.contextmanager
def server(args: argparse.Namespace, data_dir: Path, *extra: str) -> Iterator[Server]:
    process = Server(args, data_dir, args.out / "serve-log.txt", *extra)
    try:
        yield process
    finally:
        process.stop()


# --- the rows ------------------------------------------------------------------------------------------------------


def start_row(report: Report, process: Server, what: str) -> float:
    seconds = process.start()
    loaded = process.seconds_logged(r"model loaded in ([\d.]+)s")
    ready = process.seconds_logged(r"model ready after ([\d.]+)s")
    compiled = process.logged(r"\(compiled: ([^)]*)\)")
    note = ""
    if loaded is not None and ready is not None:
        note = (
            f"process starts and imports {seconds - ready:.1f} s, then the worker: model built/loaded {loaded:.1f} s, "
            f"fast path and warm-up {ready - loaded:.1f} s"
        )
    report.row(what, round(seconds, 1), note + (f"; warm-up per size: {compiled}" if compiled else ""))
    return seconds


def first_request_rows(report: Report, client: Client, body: dict[str, Any]) -> bytes:
    """The first request after ready, a request that cannot fit, then the first request again: the 503, the
    recovery and the same-bytes check in three requests. Returns the first image."""
    first = client.run(body)
    report.row(
        "first request after ready, T2I (s submit->COMPLETED)",
        round(first["seconds"], 1),
        f"status {first['status']}; peak GPU memory {_gib(peak_gib(first['logs']))}",
    )
    failed = client.run({**body, "seed": OOM_SEED})
    report.row(
        "request that cannot fit (memory capped by --test-oom-seed)",
        f"{failed['status']} {failed['result'].get('error_type', '')}",
        f"{failed['seconds']:.1f} s submit->COMPLETED; expected 503 out_of_memory",
    )
    after = client.run(body)
    report.row("the first request again, same worker, no restart", after["status"], f"{after['seconds']:.1f} s")
    report.row(
        "same request twice on one worker (before and after the OOM)",
        "same PNG bytes" if after["image"] == first["image"] and first["status"] == 200 else "DIFFERENT bytes",
        f"sha256 {digest(first['image'])} / {digest(after['image'])}",
    )
    return bytes(first["image"])


def load_rows(
    report: Report, url: str, key: str, args: argparse.Namespace, seconds: float, bench: dict[str, float]
) -> None:
    scene = scene_data_uri()
    bodies = {
        "t2i": {"prompt": args.prompt, "num_inference_steps": args.steps},
        "canny+depth": {
            "prompt": args.prompt,
            "num_inference_steps": args.steps,
            "canny_image_url": scene,
            "depth_image_url": scene,
        },
    }
    done: list[dict[str, Any]] = []
    lock = threading.Lock()
    started = time.monotonic()
    stop_at = started + seconds

    def one(index: int) -> None:
        task = "t2i" if index % 2 == 0 else "canny+depth"
        client = Client(url, key)
        seed = 1000 * index
        while time.monotonic() < stop_at:
            seed += 1
            submitted = time.monotonic()
            request_id = client.submit({**bodies[task], "seed": seed})
            if not client.wait(request_id, stop_at, poll_s=0.05):
                client.cancel(request_id)  # the window is over: queued and running jobs are given up
                return
            completed = time.monotonic()
            status, result, logs = client.result(request_id)
            with lock:
                done.append(
                    {"task": task, "status": status, "latency": completed - submitted, "completed": completed,
                     "timings": result.get("timings", {}), "peak": peak_gib(logs)}
                )  # fmt: skip

    sampler = GpuSampler()
    threads = [threading.Thread(target=one, args=(index,)) for index in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sampler.stop()
    ok = [record for record in done if record["status"] == 200]
    failed = len(done) - len(ok)
    if len(ok) < 2:
        report.row("load through the queue", f"{len(ok)} images", "too few in the window for rates")
        return
    ok.sort(key=lambda record: record["completed"])
    wall = ok[-1]["completed"] - started
    steady = (len(ok) - 1) / (ok[-1]["completed"] - ok[0]["completed"])
    report.row(
        f"images/hour, {args.clients} clients, T2I + canny+depth alternating",
        round(steady * 3600),
        f"{len(ok)} images in {wall:.0f} s ({len(ok) * 3600 / wall:.0f}/h counting the first image's wait); "
        f"rate between the first and last completion; {failed} failed",
    )
    for task in bodies:
        mine = [record for record in ok if record["task"] == task]
        if not mine:
            continue
        latencies = sorted(record["latency"] for record in mine)
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        phases = {
            name: statistics.mean(record["timings"].get(name, 0.0) for record in mine)
            for name in ("inputs", "preprocess", "encode", "denoise", "decode", "progress", "output", "cpu")
        }
        generate_s = sum(phases[name] for name in ("preprocess", "encode", "denoise", "decode"))
        outside = phases["inputs"] + phases["progress"] + phases["output"]
        report.row(
            f"{task}: submit->COMPLETED p50 / p95 (s)",
            f"{statistics.median(latencies):.1f} / {p95:.1f}",
            f"{len(mine)} images",
        )
        report.row(
            f"{task}: worker phases per image (s)",
            f"{generate_s:.2f} in generate",
            "; ".join(f"{name} {value:.3f}" for name, value in phases.items() if name != "cpu"),
        )
        report.row(
            f"{task}: worker CPU outside the GPU per image (s)",
            f"{outside:.3f}",
            f"inputs (fetch+decode) {phases['inputs']:.3f} + progress events and previews {phases['progress']:.3f} + "
            f"maps and result PNG encode+store {phases['output']:.3f}; preprocess (canny on CPU, depth model on the "
            f"GPU) {phases['preprocess']:.3f}; worker process CPU {phases['cpu']:.2f} s per image (all threads, "
            "kernel launches included)",
        )
        peaks = [record["peak"] for record in mine if record["peak"] is not None]
        if peaks:
            report.row(f"{task}: peak GPU memory allocated (GiB)", f"{max(peaks):.1f}", "models included, per request")
        if task in bench:
            report.row(
                f"{task}: in-service generate time vs bench/speed.py's image time",
                f"{generate_s:.2f} s vs {bench[task]:.2f} s",
                f"{(generate_s / bench[task] - 1) * 100:+.0f} %",
            )
    denoise = sum(record["timings"].get("denoise", 0.0) for record in ok)
    report.row("GPU busy fraction (denoise seconds / wall seconds)", f"{denoise / wall:.2f}", sampler.summary())
    mix = [bench[record["task"]] for record in ok if record["task"] in bench]
    if mix:
        ideal = 3600 / statistics.mean(mix)
        report.row(
            "images/hour vs bench/speed.py's per-image time, same mix",
            f"{steady * 3600:.0f} vs {ideal:.0f}",
            f"{(steady * 3600 / ideal - 1) * 100:+.0f} % (bench: generate alone, back to back, no queue)",
        )


class GpuSampler:
    """nvidia-smi's utilisation and memory every 500 ms while it runs (nothing without nvidia-smi)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.proc: subprocess.Popen[str] | None = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 "-lms", "500"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                utilisation, memory = (float(part) for part in line.split(","))
                self.samples.append((utilisation, memory))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()

    def summary(self) -> str:
        if not self.samples:
            return "no nvidia-smi"
        utilisation = statistics.mean(sample[0] for sample in self.samples)
        memory = max(sample[1] for sample in self.samples) / 1024
        return f"nvidia-smi: utilisation {utilisation:.0f} % mean, memory used {memory:.1f} GiB max (all processes)"


def bench_image_seconds() -> dict[str, float]:
    """bench/speed.py's whole-image seconds at 1024² on the fast path: this command's speed part ($OUT/speed), else
    the committed bench/results.json (when it came from a GPU)."""
    runs = [Path(os.environ["OUT"]) / "speed" / "results.json"] if os.environ.get("OUT") else []
    for path in (*runs, ROOT / "bench" / "results.json"):
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        if data.get("meta", {}).get("tiny"):
            continue
        found = {}
        for task in ("t2i", "canny+depth"):
            for name in ("fast", "lossless"):
                row = data.get("rows", {}).get(f"1024x1024 {task} {name}")
                if row and row.get("image_s"):
                    found[task] = float(row["image_s"])
                    break
        if found:
            return found
    return {}


def device_name() -> str:
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(subprocess.SubprocessError, OSError, IndexError):
            return (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
                .stdout.strip()
                .splitlines()[0]
            )
    return f"CPU {platform.machine()} ({os.cpu_count()} cores)"


# --- main ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="", help="default: 'random-full' where nvidia-smi finds a GPU, else 'tiny' (a CPU smoke run)"
    )
    parser.add_argument(
        "--budget", type=float, default=200.0, help="seconds for everything; rows that do not fit are skipped"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ["OUT"]) / "serve" if os.environ.get("OUT") else ROOT / "bench",
        help="where SERVE_GPU.md, serve_gpu.json and serve-log.txt go (default: $OUT/serve, else bench/)",
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--load-s", type=float, default=90.0, help="longest load window (shortened to fit the budget)")
    parser.add_argument("--warmup", default="1:1", help="--warmup-aspect-ratios of the server ('' = all nine)")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs `reimagine serve`")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument(
        "--serve-arg", action="append", default=[], help="one more argument for every `reimagine serve` (repeatable)"
    )
    parser.add_argument(
        "--extras",
        default="deterministic,two-workers,cpu-offload",
        help="optional last rows, in order, each run only if the budget left allows ('' for none)",
    )
    args = parser.parse_args(argv)
    args.model = args.model or ("random-full" if device_name().startswith("NVIDIA") else "tiny")
    begun = time.monotonic()
    _DEADLINE[0] = begun + args.budget - 5  # five seconds to stop the last server and write
    report = Report(
        args.out,
        {
            "device": device_name(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python bench/serve_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "model": args.model, "steps": args.steps, "warmup": args.warmup or "all nine", "budget_s": args.budget,
        },
    )  # fmt: skip
    report.write()
    body = {**SAME_REQUEST, "prompt": args.prompt, "num_inference_steps": args.steps}
    bench = bench_image_seconds() if args.model == "random-full" else {}
    with tempfile.TemporaryDirectory(prefix="serve-gpu-") as tmp:
        data_dir = Path(tmp) / "data"
        try:
            with server(args, data_dir) as first:
                cold = start_row(report, first, "cold start to /health/ready, empty compile cache (s)")
                key = first.key()
                assert key, "no API key was printed"
                client = Client(first.url, key)
                images: list[bytes] = []
                guarded(report, "first requests", lambda: images.append(first_request_rows(report, client, body)))
                reference = images[0] if images else b""
                # What a restart costs once the compile cache is warm: the cold start less most of its warm-up.
                loaded = first.seconds_logged(r"model loaded in ([\d.]+)s") or 0.0
                warm_up = (first.seconds_logged(r"model ready after ([\d.]+)s") or loaded) - loaded
                warm = cold - 0.7 * warm_up
                window = min(args.load_s, left() - warm - 20)  # 20 s: stopping, and one request after the restart
                if window < 30:  # the load comes first (priority order); the restart only if it still fits
                    window = min(args.load_s, left() - 10)
                if window >= 10:
                    guarded(
                        report, "load through the queue", lambda: load_rows(report, first.url, key, args, window, bench)
                    )
                else:
                    report.row("load through the queue", "skipped", f"{left():.0f} s left of the budget")
            if left() > warm + 10:
                with server(args, data_dir) as second:
                    warm = start_row(report, second, "restart to /health/ready, warm compile cache (s)")
                    again = Client(second.url, key).run(body)
                    same = again["image"] == reference
                    report.row(
                        "same request after the restart (default fast path)",
                        "same PNG bytes" if same else "DIFFERENT bytes",
                        f"sha256 {digest(again['image'])} vs {digest(reference)} before the restart",
                    )
            else:
                report.row("restart with a warm compile cache", "skipped", f"{left():.0f} s left of the budget")
            extras: dict[str, Callable[[], None]] = {
                "deterministic": lambda: deterministic_rows(report, args, Path(tmp), body, cold, warm),
                "two-workers": lambda: two_worker_rows(report, args, data_dir, key, warm),
                "cpu-offload": lambda: offload_rows(report, args, Path(tmp), body, warm),
            }
            for name in filter(None, args.extras.split(",")):
                guarded(report, name, extras[name])
        except (TimeoutError, RuntimeError, AssertionError, OSError, httpx.HTTPError) as exc:
            print(f"[serve_gpu] stopped: {exc}", flush=True)  # the whole message (a server's last lines) for the log
            lines = str(exc).strip().splitlines() or [""]
            report.row("stopped", type(exc).__name__, " / ".join(line.strip() for line in lines[-3:])[:300])
    report.row("total wall time of this script (s)", round(time.monotonic() - begun, 1))
    return 0


def guarded(report: Report, what: str, run: Callable[[], None]) -> None:
    """Run a row; a failure of its own becomes a row (the rows after it still run), the budget's end does not."""
    try:
        run()
    except TimeoutError:
        raise
    except Exception as exc:  # a bench keeps going: the failure is written down, with its type and first line
        report.row(f"{what}: failed", type(exc).__name__, (str(exc).splitlines() or [""])[0][:200])


def deterministic_rows(
    report: Report, args: argparse.Namespace, tmp: Path, body: dict[str, Any], cold: float, warm: float
) -> None:
    """--deterministic compiles other kernels (a cold start of its own), then the same request across a restart."""
    if left() < cold + warm + 20:
        report.row("--deterministic across a restart", "skipped", f"{left():.0f} s left; needs ~{cold + warm + 20:.0f}")
        return
    data_dir = tmp / "deterministic"
    images, key = [], ""
    for attempt in ("empty compile cache", "restart"):
        with server(args, data_dir, "--deterministic") as process:
            seconds = process.start()
            key = process.key() or key  # printed on the first start only
            run = Client(process.url, key).run(body)
            images.append(run["image"])
            report.row(
                f"--deterministic: start to ready ({attempt}) / one T2I request (s)",
                f"{seconds:.1f} / {run['seconds']:.1f}",
            )
    report.row(
        "--deterministic: same request across a restart",
        "same PNG bytes" if images[0] == images[1] else "DIFFERENT bytes",
        f"sha256 {digest(images[0])} / {digest(images[1])}",
    )


def two_worker_rows(report: Report, args: argparse.Namespace, data_dir: Path, key: str, warm: float) -> None:
    if left() < 2 * warm + 40:
        report.row("two workers on one GPU", "skipped", f"{left():.0f} s left of the budget")
        return
    with server(args, data_dir, "--workers", "2") as process:
        seconds = process.start()
        report.row("two workers on one GPU: start to ready (s)", round(seconds, 1), "warm compile cache")
        window = min(args.load_s, left() - 15)
        if window >= 15:
            load_rows(report, process.url, key, args, window, {})


def offload_rows(report: Report, args: argparse.Namespace, tmp: Path, body: dict[str, Any], warm: float) -> None:
    if left() < warm + 40:
        report.row("--cpu-offload", "skipped", f"{left():.0f} s left of the budget")
        return
    with server(args, tmp / "offload", "--cpu-offload") as process:
        seconds = process.start()
        key = process.key()
        assert key
        run = Client(process.url, key).run(body)
        report.row(
            "--cpu-offload: start to ready / one T2I request (s)",
            f"{seconds:.1f} / {run['seconds']:.1f}",
            f"peak GPU memory {_gib(peak_gib(run['logs']))}; no compile (offloaded components move)",
        )


if __name__ == "__main__":
    sys.exit(main())
