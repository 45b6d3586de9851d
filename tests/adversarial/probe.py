"""A liveness probe that runs beside an attack: `/health/live` asked in a loop, each answer's latency kept.

The probe runs in a process of its own: in the test's process it would share the GIL with the attacking clients
(which encode megabytes of JSON) and measure them rather than the server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from types import TracebackType

import httpx

from tests.conftest import REPO


class LivenessProbe:
    """`with LivenessProbe(url) as probe: attack()`, then `probe.report(...)`: speed is printed, not asserted.

    Every probe must be answered with 200 within `timeout_s`: a frozen API is what the attacks try to cause.
    """

    def __init__(self, base_url: str, *, interval_s: float = 0.01, timeout_s: float = 10.0) -> None:
        self.command = [sys.executable, "-m", "tests.adversarial.probe", base_url, str(interval_s), str(timeout_s)]
        self.latencies_s: list[float] = []
        self.failures: list[str] = []
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> LivenessProbe:
        self._proc = subprocess.Popen(self.command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        assert self._proc.stdout.readline().strip() == "started"
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._proc is not None
        out, _ = self._proc.communicate("", timeout=60)  # closing stdin stops it
        result = json.loads(out)
        self.latencies_s, self.failures = result["latencies_s"], result["failures"]

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def report(self, what: str) -> str:
        line = (
            f"{what}: /health/live n={len(self.latencies_s)} p50={self.percentile_ms(0.5):.1f} ms "
            f"p99={self.percentile_ms(0.99):.1f} ms max={self.percentile_ms(1.0):.1f} ms"
        )
        print(line)
        return line

    def assert_alive(self) -> None:
        assert not self.failures, f"/health/live failed during the attack: {self.failures[:5]}"
        assert self.latencies_s, "the probe never got an answer"


def _main(url: str, interval_s: float, timeout_s: float) -> None:
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    latencies: list[float] = []
    failures: list[str] = []
    with httpx.Client(timeout=timeout_s) as http:
        http.get(url + "/health/live")  # connect before the attack starts
        print("started", flush=True)
        while not stop.is_set():
            started = time.perf_counter()
            try:
                status = http.get(url + "/health/live").status_code
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
            else:
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    failures.append(f"status {status}")
            stop.wait(interval_s)
    print(json.dumps({"latencies_s": latencies, "failures": failures}), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))
