// One client call, one job: a sync run that outlasts the server's --sync-timeout-s answers 504 request_timeout,
// and the unmodified @fal-ai/client must not retry it (it retries other 504s three times, each a new job).
import assert from "node:assert/strict";
import { test } from "node:test";
import { ApiError, createFalClient } from "@fal-ai/client";
import { BASE_URL, ENDPOINT } from "./scenarios.mjs";

test("fal.run past the sync timeout: one HTTP request, one job, its result still available", async () => {
  const runs = [];
  const fal = createFalClient({
    credentials: process.env.FAL_KEY,
    proxyUrl: { url: `${BASE_URL}/api/fal/proxy`, when: "always" },
    // Counts what the client sends (the client's retries go through here too).
    fetch: (url, init) => {
      const target = new Headers(init.headers).get("x-fal-target-url") ?? "";
      if (target.startsWith("https://fal.run/")) runs.push(target);
      return fetch(url, init);
    },
  });
  let caught;
  try {
    // 20 steps of 0.2 s: longer than the server's 1 s sync timeout.
    await fal.run(ENDPOINT, { input: { prompt: "a slow house sleep=0.2", num_inference_steps: 20 } });
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof ApiError, `expected an ApiError, got ${caught}`);
  assert.equal(caught.status, 504, JSON.stringify(caught.body));
  assert.equal(caught.body.error_type, "request_timeout");
  assert.equal(caught.isUserTimeout, true, "the 504 must carry x-fal-request-timeout-type: user");
  assert.equal(runs.length, 1, `fal.run sent ${runs.length} requests: ${runs}`);
  // The job kept running: its id came with the 504, and its result is there once it completes.
  assert.ok(caught.requestId, "the 504 names the running request");
  await fal.queue.subscribeToStatus(ENDPOINT, { requestId: caught.requestId, mode: "polling", pollInterval: 100 });
  const { data } = await fal.queue.result(ENDPOINT, { requestId: caught.requestId });
  assert.ok(data.image.url);
});
