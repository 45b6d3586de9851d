// fal's platform headers as @fal-ai/client (proxy mode) sends them: `storageSettings` (X-Fal-Object-Lifecycle-
// Preference) on subscribe and on uploads, and an Idempotency-Key through `headers` on queue.submit.
import assert from "node:assert/strict";
import { test } from "node:test";
import { fal } from "@fal-ai/client";
import { BASE_URL, ENDPOINT } from "./scenarios.mjs";

fal.config({ credentials: process.env.FAL_KEY, proxyUrl: { url: `${BASE_URL}/api/fal/proxy`, when: "always" } });

/** Poll a file URL until it stops being served; its last status code. */
async function gone(url) {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const response = await fetch(url);
    if (response.status !== 200) return response.status;
    assert.ok(Date.now() < deadline, `${url} still served after its expiry`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

test("fal.subscribe with storageSettings: the result's file expires", async () => {
  const { data } = await fal.subscribe(ENDPOINT, {
    input: { prompt: "short-lived", num_inference_steps: 20 },
    storageSettings: { expiresIn: 2 },
  });
  assert.equal((await fetch(data.image.url)).status, 200);
  assert.ok([404, 410].includes(await gone(data.image.url)));
});

test("fal.storage.upload with a lifecycle: the upload expires", async () => {
  const url = await fal.storage.upload(new Blob(["short-lived"], { type: "text/plain" }), {
    lifecycle: { expiresIn: 2 },
  });
  assert.equal(await (await fetch(url)).text(), "short-lived");
  assert.ok([404, 410].includes(await gone(url)));
});

test("fal.queue.submit twice with one Idempotency-Key: one request", async () => {
  const headers = { "Idempotency-Key": `js-${Date.now()}-${Math.random()}` };
  const input = { prompt: "idempotent", num_inference_steps: 20 };
  const first = await fal.queue.submit(ENDPOINT, { input, headers });
  const second = await fal.queue.submit(ENDPOINT, { input, headers });
  assert.equal(second.request_id, first.request_id);
});
