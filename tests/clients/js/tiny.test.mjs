// @fal-ai/client (proxy mode) end to end on `reimagine serve --model tiny`: the real pipeline on tiny weights.
import { test } from "node:test";
import { fal } from "@fal-ai/client";
import * as scenarios from "./scenarios.mjs";

fal.config({ credentials: process.env.FAL_KEY, proxyUrl: { url: `${scenarios.BASE_URL}/api/fal/proxy`, when: "always" } });

test("fal.subscribe on the tiny model, depth and canny preprocessing", () => scenarios.tiny(fal));
