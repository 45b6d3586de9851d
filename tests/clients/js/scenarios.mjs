// Scenarios for the unmodified @fal-ai/client against a running `reimagine serve`; each takes a configured client.
// The mode files (proxy.test.mjs, middleware.test.mjs, fetch.test.mjs) configure the client the way a user would
// (docs/clients.md) and register these as node:test tests, so a failure names the client call that broke.
// Env (set by tests/clients/test_js_client.py): REIMAGINE_URL, FAL_KEY, SCENE_PNG, NODE_EXTRA_CA_CERTS.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { ApiError, ValidationError } from "@fal-ai/client";

export const BASE_URL = process.env.REIMAGINE_URL;
export const ENDPOINT = "bria/reimagine/3.2";

/** fal's hosts -> reimagine: queue at the root, the run host under /run, REST (storage) at the root. */
export const rewriteFalUrl = (url) =>
  url
    .replace(/^https:\/\/queue\.fal\.run\//, `${BASE_URL}/`)
    .replace(/^https:\/\/fal\.run\//, `${BASE_URL}/run/`)
    .replace(/^https:\/\/rest\.(alpha\.)?fal\.ai\//, `${BASE_URL}/`);
const SCENE = readFileSync(process.env.SCENE_PNG);
const SIZE = [1024, 1024]; // 1:1: the default, and the square scene's own ratio

export const sceneBlob = (name) =>
  name ? new File([SCENE], name, { type: "image/png" }) : new Blob([SCENE], { type: "image/png" });
const dataUri = () => `data:image/png;base64,${SCENE.toString("base64")}`;
const input = (prompt = "a cozy house log=hello", fields = {}) => ({ prompt, num_inference_steps: 20, ...fields });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Run one client call; a failure names it. */
async function call(name, fn) {
  try {
    return await fn();
  } catch (error) {
    const detail = error instanceof ApiError ? ` (HTTP ${error.status}: ${JSON.stringify(error.body)})` : "";
    throw new Error(`client call ${name} failed: ${error.message}${detail}`, { cause: error });
  }
}

/** A client call that must reject with an ApiError of `status`; returns the error. */
async function expectApiError(name, status, fn) {
  let caught;
  try {
    await fn();
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof ApiError, `${name}: expected ApiError ${status}, got ${caught}`);
  assert.equal(caught.status, status, `${name}: HTTP ${caught.status} ${JSON.stringify(caught.body)}`);
  return caught;
}

/** PNG width and height from its IHDR chunk. */
function pngSize(bytes) {
  assert.equal(bytes.subarray(1, 4).toString(), "PNG");
  return [bytes.readUInt32BE(16), bytes.readUInt32BE(20)];
}

async function download(url) {
  assert.ok(url.startsWith(`${BASE_URL}/`), `${url} is not on ${BASE_URL}`);
  const response = await fetch(url);
  assert.equal(response.status, 200, `GET ${url}: ${response.status}`);
  return { type: response.headers.get("content-type"), bytes: Buffer.from(await response.arrayBuffer()) };
}

async function checkImage(data, size = SIZE) {
  assert.deepEqual([data.image.width, data.image.height], size);
  const { type, bytes } = await download(data.image.url);
  assert.ok(type.startsWith("image/png"), type);
  assert.deepEqual(pngSize(bytes), size);
}

/** `fal.run` with the scene as a URL (a loopback host), a data URI and an uploaded file; preprocessing on and off. */
export async function runInputs(fal) {
  const host = createServer((req, res) => res.writeHead(200, { "content-type": "image/png" }).end(SCENE));
  await new Promise((resolve) => host.listen(0, "127.0.0.1", resolve));
  try {
    const uploaded = await call("fal.storage.upload", () => fal.storage.upload(sceneBlob("scene.png")));
    const sources = { url: `http://127.0.0.1:${host.address().port}/scene.png`, dataUri: dataUri(), uploaded };
    for (const [how, url] of Object.entries(sources)) {
      for (const preprocess of [true, false]) {
        const fields = { depth_image_url: url, canny_image_url: url, depth_preprocess: preprocess };
        Object.assign(fields, { canny_preprocess: preprocess, seed: 11 });
        const result = await call(`fal.run (image as ${how}, preprocess=${preprocess})`, () =>
          fal.run(ENDPOINT, { input: input("a house", fields) }),
        );
        assert.ok(result.requestId, "x-fal-request-id not exposed as requestId");
        assert.equal(result.data.seed, 11);
        await checkImage(result.data);
      }
    }
  } finally {
    host.close();
  }
}

/** `fal.subscribe` in polling or streaming mode, with `onEnqueue`, `onQueueUpdate` and logs. */
export async function subscribe(fal, mode) {
  const updates = [];
  const enqueued = [];
  const result = await call(`fal.subscribe (mode ${mode})`, () =>
    fal.subscribe(ENDPOINT, {
      input: input(`sleep=0.02 log=hello-${mode}`),
      logs: true,
      mode,
      pollInterval: 100,
      onEnqueue: (id) => enqueued.push(id),
      onQueueUpdate: (update) => updates.push(update),
    }),
  );
  assert.equal(enqueued.length, 1);
  assert.equal(result.requestId, enqueued[0]);
  await checkImage(result.data);
  const last = updates.at(-1);
  assert.equal(last.status, "COMPLETED", JSON.stringify(updates));
  assert.ok(updates.some((update) => update.status === "IN_PROGRESS"), JSON.stringify(updates));
  const messages = updates.flatMap((update) => update.logs ?? []).map((line) => line.message);
  assert.ok(messages.includes(`hello-${mode}`), JSON.stringify(messages));
}

/** `fal.queue.submit` -> `status` (logs) -> `subscribeToStatus` -> `result`; `streamStatus`. */
export async function queue(fal) {
  const submitted = await call("fal.queue.submit", () =>
    fal.queue.submit(ENDPOINT, { input: input("sleep=0.02 log=queued-line"), priority: "low" }),
  );
  const requestId = submitted.request_id;
  assert.equal(submitted.status, "IN_QUEUE");
  // URLs in answers point at this server, also through the proxy (built from the original Host and scheme)
  assert.equal(submitted.response_url, `${BASE_URL}/bria/reimagine/requests/${requestId}`);
  assert.equal(submitted.status_url, `${submitted.response_url}/status`);
  const status = await call("fal.queue.status", () => fal.queue.status(ENDPOINT, { requestId, logs: true }));
  assert.ok(["IN_QUEUE", "IN_PROGRESS", "COMPLETED"].includes(status.status), JSON.stringify(status));
  const done = await call("fal.queue.subscribeToStatus", () =>
    fal.queue.subscribeToStatus(ENDPOINT, { requestId, logs: true, mode: "polling", pollInterval: 100 }),
  );
  assert.equal(done.status, "COMPLETED");
  const completed = await call("fal.queue.status (completed)", () =>
    fal.queue.status(ENDPOINT, { requestId, logs: true }),
  );
  assert.ok(completed.logs.map((line) => line.message).includes("queued-line"), JSON.stringify(completed));
  const result = await call("fal.queue.result", () => fal.queue.result(ENDPOINT, { requestId }));
  assert.equal(result.requestId, requestId);
  await checkImage(result.data);
  const stream = await call("fal.queue.streamStatus", () => fal.queue.streamStatus(ENDPOINT, { requestId }));
  const final = await call("FalStream.done (status stream)", () => stream.done());
  assert.equal(final.status, "COMPLETED");
}

async function waitStatus(fal, requestId, wanted) {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const status = await fal.queue.status(ENDPOINT, { requestId });
    if (status.status === wanted) return status;
    assert.ok(Date.now() < deadline, `${requestId} never reached ${wanted}`);
    await sleep(50);
  }
}

/** `fal.queue.cancel` of a queued and of a running request; a second cancel is an ApiError 400. */
export async function cancel(fal) {
  const running = await call("fal.queue.submit (slow)", () =>
    fal.queue.submit(ENDPOINT, { input: input("sleep=0.1 slow", { num_inference_steps: 50 }) }),
  );
  await call("fal.queue.status until IN_PROGRESS", () => waitStatus(fal, running.request_id, "IN_PROGRESS"));
  const queued = await call("fal.queue.submit (waits behind it)", () =>
    fal.queue.submit(ENDPOINT, { input: input("never runs") }),
  );
  const status = await call("fal.queue.status (queued)", () =>
    fal.queue.status(ENDPOINT, { requestId: queued.request_id }),
  );
  assert.equal(status.status, "IN_QUEUE");
  for (const [name, { request_id: requestId }] of [["queued", queued], ["running", running]]) {
    await call(`fal.queue.cancel (${name})`, () => fal.queue.cancel(ENDPOINT, { requestId }));
    const done = await call(`fal.queue.status after cancel (${name})`, () => waitStatus(fal, requestId, "COMPLETED"));
    assert.ok(done.error, JSON.stringify(done));
    await expectApiError(`fal.queue.result of a cancelled request (${name})`, 499, () =>
      fal.queue.result(ENDPOINT, { requestId }),
    );
  }
  await expectApiError("fal.queue.cancel of a completed request", 400, () =>
    fal.queue.cancel(ENDPOINT, { requestId: running.request_id }),
  );
}

/** `fal.storage.upload` of a File (initiate + PUT); the returned URL serves the same bytes and type. */
export async function upload(fal) {
  const url = await call("fal.storage.upload (File)", () => fal.storage.upload(sceneBlob("scene.png")));
  const { type, bytes } = await download(url);
  assert.ok(type.startsWith("image/png"), type);
  assert.ok(bytes.equals(SCENE));
  const unnamed = await call("fal.storage.upload (Blob)", () => fal.storage.upload(sceneBlob()));
  assert.ok((await download(unnamed)).bytes.equals(SCENE));
}

/** `fal.storage.upload` of a Blob over the client's 90 MiB limit: multipart (initiate, part PUTs, complete). */
export async function multipart(fal) {
  const size = 90 * 1024 * 1024 + 1024 * 1024 + 7;
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4096) data.writeUInt32BE(i, i);
  const started = Date.now();
  const url = await call(`fal.storage.upload of ${size} bytes (multipart)`, () =>
    fal.storage.upload(new Blob([data], { type: "application/octet-stream" })),
  );
  console.log(`multipart upload of ${(size / 2 ** 20).toFixed(1)} MiB took ${(Date.now() - started) / 1000} s`);
  const { bytes } = await download(url);
  assert.equal(bytes.length, size);
  const digest = (buffer) => createHash("sha256").update(buffer).digest("hex");
  assert.equal(digest(bytes), digest(data));
}

/** A Blob in the input is uploaded by the client and replaced by its URL (storage.transformInput). */
export async function blobInput(fal) {
  const result = await call("fal.subscribe with Blob inputs (auto-upload)", () =>
    fal.subscribe(ENDPOINT, {
      input: input("from a blob", { depth_image_url: sceneBlob(), canny_image_url: sceneBlob("edges.png") }),
      pollInterval: 100,
    }),
  );
  await checkImage(result.data);
}

/** `fal.stream`: the run host's /stream; every event is JSON and `done()` is the result. */
export async function stream(fal) {
  const events = [];
  const result = await call("fal.stream", async () => {
    const stream = await fal.stream(ENDPOINT, { input: input("sleep=0.01 streamed") });
    for await (const event of stream) events.push(event);
    return stream.done();
  });
  assert.ok(events.length >= 2, JSON.stringify(events));
  await checkImage(result);
}

/** A bad key is an ApiError 401; a bad field a ValidationError 422 naming the field. */
export async function errors(fal, stranger) {
  await expectApiError("fal.run with a bad key", 401, () => stranger.run(ENDPOINT, { input: input() }));
  await expectApiError("fal.queue.submit with a bad key", 401, () => stranger.queue.submit(ENDPOINT, { input: input() }));
  const invalid = await expectApiError("fal.run with num_inference_steps=5", 422, () =>
    fal.run(ENDPOINT, { input: input("x", { num_inference_steps: 5 }) }),
  );
  assert.ok(invalid instanceof ValidationError);
  assert.deepEqual(invalid.fieldErrors[0].loc, ["body", "num_inference_steps"]);
  const missing = await expectApiError("fal.subscribe without a prompt", 422, () =>
    fal.subscribe(ENDPOINT, { input: { seed: 1 } }),
  );
  assert.deepEqual(missing.fieldErrors[0].loc, ["body", "prompt"]);
}

/** End to end on `--model tiny`: a Blob scene (auto-uploaded) with depth preprocessing. */
export async function tiny(fal) {
  const result = await call("fal.subscribe (tiny model)", () =>
    fal.subscribe(ENDPOINT, { input: input("a red house", { depth_image_url: sceneBlob() }), pollInterval: 200 }),
  );
  await checkImage(result.data);
}
