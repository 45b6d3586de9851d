// @fal-ai/client in proxy mode: every API call goes to reimagine's /api/fal/proxy with x-fal-target-url.
import { test } from "node:test";
import { createFalClient, fal } from "@fal-ai/client";
import * as scenarios from "./scenarios.mjs";

const proxyUrl = { url: `${scenarios.BASE_URL}/api/fal/proxy`, when: "always" };
fal.config({ credentials: process.env.FAL_KEY, proxyUrl });
const stranger = createFalClient({ credentials: "nobody:nothing", proxyUrl });

test("fal.run: image as URL, data URI and uploaded file; preprocess on and off", () => scenarios.runInputs(fal));
test("fal.subscribe, polling, with onQueueUpdate and logs", () => scenarios.subscribe(fal, "polling"));
test("fal.subscribe, streaming, with onQueueUpdate and logs", () => scenarios.subscribe(fal, "streaming"));
test("fal.queue.submit/status/subscribeToStatus/result/streamStatus", () => scenarios.queue(fal));
test("fal.queue.cancel, queued and running", () => scenarios.cancel(fal));
test("fal.storage.upload", () => scenarios.upload(fal));
test("fal.storage.upload, multipart over 90 MiB", () => scenarios.multipart(fal));
test("Blob inputs are uploaded automatically", () => scenarios.blobInput(fal));
test("fal.stream", () => scenarios.stream(fal));
test("401 with a bad key, 422 with a bad field", () => scenarios.errors(fal, stranger));
