// @fal-ai/client with a requestMiddleware that rewrites fal's hosts to reimagine (no proxy endpoint involved).
import { test } from "node:test";
import { createFalClient, fal } from "@fal-ai/client";
import * as scenarios from "./scenarios.mjs";

const rewrite = scenarios.rewriteFalUrl;
const requestMiddleware = async (request) => ({ ...request, url: rewrite(request.url) });
fal.config({ credentials: process.env.FAL_KEY, requestMiddleware });
const stranger = createFalClient({ credentials: "nobody:nothing", requestMiddleware });

test("fal.subscribe, polling", () => scenarios.subscribe(fal, "polling"));
test("fal.subscribe, streaming", () => scenarios.subscribe(fal, "streaming"));
test("fal.queue.submit/status/subscribeToStatus/result/streamStatus", () => scenarios.queue(fal));
test("fal.storage.upload", () => scenarios.upload(fal));
test("Blob inputs are uploaded automatically", () => scenarios.blobInput(fal));
test("fal.stream", () => scenarios.stream(fal));
test("401 with a bad key, 422 with a bad field", () => scenarios.errors(fal, stranger));
