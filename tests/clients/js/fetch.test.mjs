// @fal-ai/client with a custom fetch that rewrites fal's hosts to reimagine.
import { test } from "node:test";
import { createFalClient, fal } from "@fal-ai/client";
import * as scenarios from "./scenarios.mjs";

const rewritingFetch = (url, init) => fetch(scenarios.rewriteFalUrl(String(url)), init);
fal.config({ credentials: process.env.FAL_KEY, fetch: rewritingFetch });
const stranger = createFalClient({ credentials: "nobody:nothing", fetch: rewritingFetch });

test("fal.run", () => scenarios.runInputs(fal));
test("fal.subscribe, streaming", () => scenarios.subscribe(fal, "streaming"));
test("fal.queue.cancel, queued and running", () => scenarios.cancel(fal));
test("fal.storage.upload", () => scenarios.upload(fal));
test("fal.stream", () => scenarios.stream(fal));
test("401 with a bad key, 422 with a bad field", () => scenarios.errors(fal, stranger));
