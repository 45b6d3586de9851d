"""Issue 13 item 2: status polls re-read and parsed the job's whole input (117 ms at 10 MB); four clients polling a
60 MB job pushed /health/live to 5.9 s. Status answers are read from the status columns (the store split's
status-only read); this attack keeps them honest."""

from __future__ import annotations

import threading
import time

import httpx

from tests.adversarial.probe import LivenessProbe
from tests.api.helpers import REQUESTS, data_uri, submit, wait_completed
from tests.conftest import ServeProcess
from tests.files.conftest import png_bytes

MIB = 1024 * 1024


def test_polling_a_job_with_a_big_input_leaves_the_api_live(server: ServeProcess, client: httpx.Client) -> None:
    # A 10 MB input: a small PNG and 10 MB that the decoder never reads.
    big = data_uri(png_bytes((64, 64)) + b"\0" * (10 * MIB))
    request_id = submit(client, {"prompt": "sleep=0.1 a", "canny_image_url": big})["request_id"]
    polls: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=server.url, headers=server.headers(), timeout=30) as http:
            while not stop.is_set():
                started = time.perf_counter()
                assert http.get(f"{REQUESTS}/{request_id}/status").status_code in (200, 202)
                polls.append(time.perf_counter() - started)

    pollers = [threading.Thread(target=poll) for _ in range(4)]
    with LivenessProbe(server.url) as probe:
        for thread in pollers:
            thread.start()
        time.sleep(3.0)  # the attack's duration: nothing is waited for
        stop.set()
        for thread in pollers:
            thread.join()
    probe.report(f"4 clients polling a 10 MB job ({len(polls)} polls, mean {1000 * sum(polls) / len(polls):.1f} ms)")
    probe.assert_alive()
    assert wait_completed(client, request_id, timeout_s=60)["status"] == "COMPLETED"
