// The reimagine playground: a form built from the OpenAPI input schema, driven by the fal queue API.
// Plain ES module, no build step. Every URL is relative to the page, so the server may sit behind a path prefix.

const QUEUE = "bria/reimagine";
const KEY_STORE = "reimagine.apiKey";
const HISTORY_STORE = "reimagine.history";
const HISTORY_MAX = 24;

const $ = (id) => document.getElementById(id);
const form = $("form");
const url = (path) => new URL(path, document.baseURI).href;
const baseUrl = () => url(".").replace(/\/$/, "");
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

let fields = [];          // [{name, type, default, minimum, maximum, enum, title, description, ...}]
let capabilities = {};    // field name -> {effective, playground, reason}: what does nothing here, and why
let endpoint = "bria/reimagine/3.2";
let current = null;       // the request on screen: {id, abort, maps, lastEventId}

// ---------------------------------------------------------------------------------------------------------------
// Schema → form

// Which fields do something on this server (an older server has no such route: then every field applies).
async function loadCapabilities() {
  try {
    const res = await fetch(url(`${QUEUE}/capabilities`));
    return res.ok ? (await res.json()).fields || {} : {};
  } catch {
    return {};
  }
}

async function loadSchema() {
  const doc = await (await fetch(url("openapi.json"))).json();
  const schemas = doc.components.schemas;
  const input = schemas.ReimagineInput;
  endpoint = doc["x-fal-endpoint"] || endpoint;
  const resolve = (prop) => {
    const ref = prop.$ref || prop.allOf?.[0]?.$ref;
    return ref ? { ...schemas[ref.split("/").pop()], ...prop } : prop;
  };
  // Labels come from the field's own title; a referenced enum's title names the type, not the field.
  const label = (name, prop) => prop.title || name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  return Object.entries(input.properties).map(([name, prop]) => ({
    name, ...resolve(prop), title: label(name, prop), required: (input.required || []).includes(name),
  }));
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children.filter(Boolean));
  return node;
}

const inapplicable = (f) => {
  const c = capabilities[f.name];
  return c && (c.effective === false || c.playground === false) ? c.reason || "Does nothing here." : "";
};

function field(f, control, { inline = false } = {}) {
  const label = el("label", { for: `f-${f.name}`, text: f.title, title: f.description });
  const why = inapplicable(f);
  const hint = f.description ? el("small", { class: "hint", text: f.description }) : null;
  const note = why ? el("small", { class: "field-note", "data-note-for": f.name, text: why }) : null;
  const error = el("div", { class: "field-error", "data-error-for": f.name, role: "alert" });
  const cls = `field field-${f.type || "string"}${inline ? " inline" : ""}${why ? " inapplicable" : ""}`;
  return inline
    ? el("div", { class: cls, "data-field": f.name }, el("div", { class: "row" }, control, label), note, hint, error)
    : el("div", { class: cls, "data-field": f.name }, label, control, note, hint, error);
}

function control(f) {
  const id = `f-${f.name}`;
  if (f.enum) {
    // A field whose absence means something of its own (`x-unset` says what) offers that first, and starts there.
    const select = el("select", { id, name: f.name });
    if (f["x-unset"]) select.append(el("option", { value: "", text: f["x-unset"], selected: true }));
    for (const value of f.enum) {
      select.append(el("option", { value, text: value, selected: !f["x-unset"] && value === f.default }));
    }
    return field(f, select);
  }
  if (f.type === "boolean") {
    // A field that does nothing here is shown unticked and greyed out, and never sent (the server's default
    // applies, and does nothing).
    const off = Boolean(inapplicable(f));
    const box = el("input", { id, name: f.name, type: "checkbox", checked: !off && f.default === true, disabled: off });
    return field(f, box, { inline: true });
  }
  if (f.type === "integer" || f.type === "number") {
    const step = f.type === "integer" ? 1 : (f.maximum ?? 1) <= 1 ? 0.05 : 0.1;
    const limits = { min: f.minimum, max: f.maximum, step };
    const number = el("input", { id, name: f.name, type: "number", ...limits });
    number.value = f.default;
    if (f.minimum === undefined || f.maximum === undefined || f.maximum - f.minimum > 1000) return field(f, number);
    const range = el("input", { type: "range", "aria-label": f.title, tabindex: -1, "data-range-for": f.name, ...limits });
    range.value = f.default;  // after min/max/step: the value is clamped and rounded to them
    range.addEventListener("input", () => {
      number.value = range.value;
      fieldError(f.name, "");
    });
    // While typing, the slider follows what it can show and the field says what is wrong; when the value is
    // committed (leaving the box, Enter, Generate), an out-of-range value is brought into range, so that the box,
    // the slider and what is sent agree, and the field keeps a line saying what was changed.
    number.addEventListener("input", () => {
      range.value = number.value;
      const bad = outOfRange(f, number.value);
      fieldError(f.name, bad ? `Must be between ${f.minimum} and ${f.maximum}.` : "");
      range.toggleAttribute("aria-invalid", Boolean(bad));
    });
    number.addEventListener("change", () => clampField(f));
    return field(f, el("div", { class: "range" }, range, number));
  }
  if (f["x-fal-file"]) return imageControl(f);
  const rows = f.required ? 3 : 2;
  const area = el("textarea", { id, name: f.name, rows, placeholder: f.examples?.[0], required: f.required });
  area.value = f.default ?? "";
  return field(f, area);
}

const outOfRange = (f, raw) => raw !== "" && (Number(raw) < f.minimum || Number(raw) > f.maximum);

function fieldError(name, message, { kept = false } = {}) {
  const slot = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
  if (!slot) return;
  slot.textContent = message;
  if (kept && message) slot.dataset.kept = "true";
  else delete slot.dataset.kept;
  const node = form.elements[name];
  if (message && !kept) node?.setAttribute("aria-invalid", "true");
  else node?.removeAttribute("aria-invalid");
}

// Brings a slider field's typed value into its range; says so next to the field. Returns whether it changed.
function clampField(f) {
  const number = form.elements[f.name];
  const range = form.querySelector(`[data-range-for="${CSS.escape(f.name)}"]`);
  if (!range || !outOfRange(f, number.value)) return false;
  const typed = number.value;
  const value = Math.min(f.maximum, Math.max(f.minimum, Number(typed)));
  number.value = value;
  range.value = value;
  range.removeAttribute("aria-invalid");
  const side = Number(typed) < f.minimum ? "below the minimum" : "above the maximum";
  fieldError(f.name, `${typed} is ${side} (${f.minimum}–${f.maximum}): set to ${value}.`, { kept: true });
  if (!$("tab-api").hidden) renderSnippets();
  return true;
}

function imageControl(f) {
  const kind = mapKind(f.name);
  const thumb = el("img", { class: "thumb", alt: `${kind} image`, hidden: true });
  const clear = el("button", { type: "button", class: "clear", title: "Remove the image", text: "×", hidden: true });
  const picker = el("input", { type: "file", accept: "image/*", hidden: true, "data-file-for": f.name });
  const choose = el("button", { type: "button", class: "link", text: "choose a file" });
  const text = el("span", { class: "drop-text" }, "Drop an image or ", choose);
  const badge = el("span", { class: "badge", hidden: true });
  const zone = el("div", { class: "drop", tabindex: 0, "data-drop-for": f.name }, thumb, clear, text, picker);
  const input = el("input", {
    id: `f-${f.name}`, name: f.name, type: "url", placeholder: "…or paste an image URL", spellcheck: "false",
  });
  const toggle = el("input", { type: "checkbox", class: "show-map", "data-map": kind, disabled: true });
  const mapRow = el("label", { class: "map-toggle muted" }, toggle, ` Show the ${kind} map the server derived`);
  const show = (src, label = "") => {
    thumb.hidden = !src;
    clear.hidden = !src;
    text.hidden = Boolean(src);
    if (src) thumb.src = src;
    badge.hidden = !label;
    badge.textContent = label;
  };
  zone.show = show;
  const useFile = (file) => file && upload(f.name, file, show);
  choose.addEventListener("click", () => picker.click());
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); picker.click(); }
  });
  picker.addEventListener("change", () => useFile(picker.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    useFile(e.dataTransfer.files[0]);
  });
  clear.addEventListener("click", () => { input.value = ""; picker.value = ""; show(""); });
  input.addEventListener("change", () => show(/^(https?:|data:)/.test(input.value.trim()) ? input.value.trim() : ""));
  toggle.addEventListener("change", () => {
    const map = current?.maps?.[kind];
    if (toggle.checked && map) show(map, `${kind} map`);
    else show(input.value.trim());
  });
  // The badge sits under the picture, never on it: a map's own lines and a photo's text stay readable.
  return field(f, el("div", { class: "image-input" }, zone, badge, input, mapRow));
}

const mapKind = (name) => name.replace(/_image_url$/, "").split("_")[0];

function buildForm() {
  // Each image field gathers the fields sharing its prefix (depth_scale, depth_preprocess) into one group;
  // required and enum fields stay in view; everything else folds under "Advanced".
  const groups = new Map(fields.filter((f) => f["x-fal-file"]).map((f) => [mapKind(f.name), f]));
  const groupOf = (f) => groups.get(f.name.split("_")[0]);
  const main = [];
  const advanced = [];
  for (const f of fields) {
    const owner = groupOf(f);
    if (owner === f) {
      const kind = mapKind(f.name);
      const prefix = new RegExp(`^${kind}\\s+(.)`, "i");  // "Depth Scale" reads "Scale" inside "Depth guidance"
      const short = (g) => ({ ...g, title: g.title.replace(prefix, (_, c) => c.toUpperCase()) });
      const members = fields.filter((g) => groupOf(g) === f).map(short);
      const title = `${kind[0].toUpperCase()}${kind.slice(1)} guidance`;
      main.push(el("fieldset", { class: "group" }, el("legend", { text: title }), ...members.map(control)));
    } else if (owner) {
      continue;
    } else if (f.required || f.enum) {
      main.push(control(f));
    } else {
      advanced.push(control(f));
    }
  }
  const fold = el("details", { class: "advanced" }, el("summary", { text: "Advanced" }), ...advanced);
  $("fields").replaceChildren(...main, advanced.length ? fold : null);
  form.addEventListener("input", () => { if (!$("tab-api").hidden) renderSnippets(); });
}

// The request body: required fields plus everything that differs from its default; an `x-unset` field whenever a
// value is chosen (sending its default is not the same as leaving it out).
function readInput() {
  const input = {};
  for (const f of fields) {
    const node = form.elements[f.name];
    if (node.disabled) continue;
    let value = node.value;
    if (f.type === "boolean") value = node.checked;
    else if (f.type === "integer" || f.type === "number") value = value === "" ? f.default : Number(value);
    if (f["x-unset"]) { if (value !== "") input[f.name] = value; }
    else if (f.required || value !== (f.default ?? "")) input[f.name] = value;
  }
  return input;
}

function writeInput(input) {
  for (const f of fields) {
    const node = form.elements[f.name];
    if (node.disabled) continue;
    const value = f.name in input ? input[f.name] : f["x-unset"] ? "" : f.default ?? "";
    if (f.type === "boolean") node.checked = Boolean(value);
    else node.value = value;
    node.dispatchEvent(new Event("input", { bubbles: true }));
    node.dispatchEvent(new Event("change"));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// API calls and errors

function headers(extra = {}) {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Key ${key}`, ...extra } : extra;
}

async function call(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const res = await fetch(url(path), init);
  if (res.ok) banner("");  // a call that works means an old key or rate-limit warning is stale
  return res;
}

// An error that is not a field's shows twice: in the banner at the top, and next to the button that was just
// pressed (after Generate at the bottom of a long form, the banner is off-screen).
function banner(message) {
  $("banner").textContent = message;
  $("banner").hidden = !message;
  $("submit-error").textContent = message;
  $("submit-error").hidden = !message;
}

function clearErrors() {
  banner("");
  for (const node of form.querySelectorAll(".field-error:not([data-kept])")) node.textContent = "";
  for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

function detailText(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  return detail ? JSON.stringify(detail) : "";
}

// Shows an API error in words: field errors next to their field, the rest in the banner. Returns the text.
async function showError(res) {
  const body = await res.json().catch(() => ({}));
  const detail = body.detail;
  if (res.status === 422 && Array.isArray(detail)) {
    const rest = [];
    for (const d of detail) {
      const name = d.loc?.[0] === "body" ? d.loc[1] : undefined;
      const slot = name && form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
      if (!slot) { rest.push(d); continue; }
      slot.textContent = d.msg;
      form.elements[name]?.setAttribute("aria-invalid", "true");
      slot.closest("details")?.setAttribute("open", "");
    }
    form.querySelector("[aria-invalid]")?.scrollIntoView({ block: "center", behavior: "smooth" });
    const message = rest.length ? `The input was rejected: ${detailText(rest)}` : "Please fix the highlighted field.";
    banner(rest.length ? message : "");
    if (!rest.length) { $("submit-error").textContent = message; $("submit-error").hidden = false; }
    return message;
  }
  const text = detailText(detail) || res.statusText;
  const wait = res.headers.get("retry-after");
  const message = {
    401: `The API key was not accepted (401): ${text}. Enter a valid key at the top right.`,
    403: `This key may not do that (403): ${text}.`,
    404: `Not found (404): ${text}.`,
    429: `Too many requests (429): ${text}.${wait ? ` Try again in ${wait} s.` : ""}`,
    499: "Cancelled.",
  }[res.status] || `The server answered ${res.status}: ${text}`;
  if (res.status !== 499) banner(message);
  return message;
}

// ---------------------------------------------------------------------------------------------------------------
// Uploads (fal storage: initiate, then PUT the bytes to the returned URL)

async function upload(name, file, show) {
  const slot = form.querySelector(`[data-error-for="${name}"]`);
  const zone = form.querySelector(`[data-drop-for="${name}"]`);
  const preview = URL.createObjectURL(file);
  show(preview, "uploading…");
  zone.classList.add("busy");
  slot.textContent = "";
  try {
    const init = await call("POST", "storage/upload/initiate?storage_type=fal-cdn-v3", {
      file_name: file.name || "upload.png", content_type: file.type || "application/octet-stream",
    });
    if (!init.ok) throw new Error(await showError(init));
    const { upload_url: target, file_url: fileUrl } = await init.json();
    const sameOrigin = new URL(target, location.href).origin === location.origin;
    const type = { "Content-Type": file.type || "application/octet-stream" };
    const put = await fetch(target, { method: "PUT", body: file, headers: sameOrigin ? headers(type) : type });
    if (!put.ok) throw new Error(`the upload failed (${put.status})`);
    form.elements[name].value = fileUrl;
    show(preview, "");
  } catch (err) {
    slot.textContent = `Upload failed: ${err.message}`;
    show("");
  } finally {
    zone.classList.remove("busy");
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Submit, follow the status stream, show the result

async function submit(event) {
  event.preventDefault();
  clearErrors();
  for (const f of fields) clampField(f);  // Ctrl+Enter sends without leaving the box
  const input = readInput();
  $("submit").disabled = true;
  try {
    const res = await call("POST", endpoint, input);
    if (!res.ok) { await showError(res); return; }
    const queued = await res.json();
    remember({ id: queued.request_id, prompt: input.prompt || "", input, at: Date.now() });
    await follow(queued.request_id);
  } catch (err) {
    banner(`Could not reach the server: ${err.message}`);
  } finally {
    $("submit").disabled = false;
  }
}

// Server-sent events over fetch(): EventSource cannot send the Authorization header.
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const lines = buffer.slice(0, end).split("\n");
      buffer = buffer.slice(end + 2);
      const id = lines.find((l) => l.startsWith("id:"))?.slice(3).trim();
      const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data) yield { id, status: JSON.parse(data) };
    }
  }
}

async function follow(id) {
  current?.abort.abort();
  const request = { id, abort: new AbortController(), maps: {}, lastEventId: "" };
  current = request;
  resetOutput();
  revealOutput();
  setRunning(true);
  let last = null;
  try {
    for (let attempt = 0; attempt < 6 && last?.status !== "COMPLETED"; attempt++) {
      if (attempt) await sleep(500 * attempt);
      try {
        const extra = { Accept: "text/event-stream" };
        if (request.lastEventId) extra["Last-Event-ID"] = request.lastEventId;
        const res = await fetch(url(`${QUEUE}/requests/${id}/status/stream?logs=1`), {
          headers: headers(extra), signal: request.abort.signal,
        });
        if (!res.ok) { setState("failed", await showError(res)); return; }
        for await (const { id: eventId, status } of events(res.body)) {
          if (eventId) request.lastEventId = eventId;
          last = status;
          renderStatus(status);
          if (status.status === "COMPLETED") break;
        }
      } catch (err) {
        if (request.abort.signal.aborted) return;
      }
    }
    if (last?.status === "COMPLETED") await showResult(id, last);
    else setState("failed", "Lost the status stream; reopen the request from the history below.");
  } finally {
    if (current === request) setRunning(false);
    refreshHistorySoon();
  }
}

// On wide screens the output panel is sticky beside the form; on narrow ones it sits below a long form, so
// bring its status line into view (at once: a smooth scroll would still be moving when the first status comes).
function revealOutput() {
  const box = $("state").getBoundingClientRect();
  if (box.top < 0 || box.bottom > window.innerHeight) $("state").closest(".output").scrollIntoView({ block: "start" });
}

function renderStatus(status) {
  const extra = status.reimagine || {};
  if (status.status === "IN_QUEUE") {
    const n = status.queue_position ?? 0;
    setState("queued", n === 0 ? "In queue: next up" : `In queue: position ${n + 1}`);
  } else if (status.status === "IN_PROGRESS") {
    setState("running", "Generating");
  }
  if (extra.progress) {
    $("progress").max = extra.progress.total;
    $("progress").value = extra.progress.step;
    $("step").textContent = `step ${extra.progress.step}/${extra.progress.total}`;
  }
  if (extra.preview_url && $("result-figure").hidden && $("preview").getAttribute("src") !== extra.preview_url) {
    $("preview").src = extra.preview_url;
    $("preview").hidden = false;
    $("placeholder").hidden = true;
  }
  if (extra.maps) {
    current.maps = extra.maps;
    for (const toggle of form.querySelectorAll(".show-map")) toggle.disabled = !extra.maps[toggle.dataset.map];
  }
  for (const entry of status.logs || []) {
    $("logs").textContent += `${entry.timestamp?.slice(11, 19) || ""} ${entry.level} ${entry.message}\n`;
    $("log-count").textContent = `(${$("logs").textContent.trim().split("\n").length})`;
  }
}

async function showResult(id, status) {
  const res = await call("GET", `${QUEUE}/requests/${id}`);
  if (!res.ok) {
    if (res.status === 499 || status.reimagine?.state === "canceled") {
      setState("cancelled", "Cancelled");
      update(id, { state: "cancelled" });
      return;
    }
    // A 422 result names a field (an unreadable image URL): show it there. Other failures: the state line says it.
    const detail = res.status === 422 ? await showError(res) : detailText((await res.json().catch(() => ({}))).detail);
    setState("failed", `Failed (${res.status}): ${status.error || detail}`);
    update(id, { state: "failed" });
    return;
  }
  const data = await res.json();
  const image = data.image;
  $("result").src = image.url;
  $("result-link").href = image.url;
  $("result-figure").hidden = false;
  $("preview").hidden = true;
  $("placeholder").hidden = true;
  $("open-full").href = image.url;
  $("download").href = image.url;
  $("download").download = image.file_name || `reimagine-${data.seed}.png`;
  const timings = Object.entries(data.timings || {}).map(([k, v]) => `${k} ${v.toFixed(2)} s`).join(", ");
  const rows = [
    ["Size", `${image.width} × ${image.height}`],
    ["Seed", data.seed],
    ["Time", status.metrics?.inference_time != null ? `${status.metrics.inference_time.toFixed(2)} s` : null],
    ["Timings", timings || null],
    ["Request", id],
  ];
  $("meta").replaceChildren(...rows.filter(([, v]) => v != null && v !== "")
    .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
  $("result-bar").hidden = false;
  $("progress").value = $("progress").max;
  showCompare(current?.maps || {});
  setState("done", "Done");
  // A sync_mode result is a data URI: too big to keep in localStorage.
  update(id, { state: "done", thumb: image.url.startsWith("data:") ? undefined : image.url });
}

// ---------------------------------------------------------------------------------------------------------------
// Side by side: the structure map the server derived next to the result, and over it at a chosen opacity. Whether
// the picture follows the edges or the depth is the first thing a user of structure guidance checks.

function showCompare(maps) {
  const kinds = Object.keys(maps).filter((kind) => maps[kind]);
  if (!kinds.length) { hideCompare(); return; }
  const select = $("compare-map");
  const keep = kinds.includes(select.value) ? select.value : kinds[0];
  select.replaceChildren(...kinds.map((kind) => el("option", { value: kind, text: kind, selected: kind === keep })));
  $("compare").hidden = false;
  $("stage").classList.add("split");
  setCompare();
}

function setCompare() {
  const kind = $("compare-map").value;
  const map = current?.maps?.[kind];
  if (!map) return;
  $("map").src = map;
  $("map-caption").textContent = `${kind} map`;
  $("map-figure").hidden = false;
  const opacity = Number($("compare-opacity").value);
  $("overlay").src = map;
  $("overlay").style.opacity = String(opacity);
  $("overlay").hidden = opacity === 0;
  $("compare-value").textContent = `${Math.round(opacity * 100)} %`;
}

function hideCompare() {
  $("compare").hidden = true;
  $("map-figure").hidden = true;
  $("overlay").hidden = true;
  $("stage").classList.remove("split");
}

async function cancel() {
  if (!current) return;
  $("cancel").disabled = true;
  try {
    const res = await call("PUT", `${QUEUE}/requests/${current.id}/cancel`);
    if (res.ok) setState("cancelling", "Cancelling…");
    else if (res.status !== 400) await showError(res);  // 400: it finished first; the stream shows the outcome
  } catch (err) {
    banner(`Could not reach the server: ${err.message}`);
    $("cancel").disabled = false;
  }
}

function setState(state, text) {
  $("state").dataset.state = state;
  $("state").textContent = text;
}

function setRunning(running) {
  $("cancel").hidden = !running;
  $("cancel").disabled = false;
  $("submit").textContent = running ? "Generate another" : "Generate";
}

function resetOutput() {
  setState("queued", "Submitted");
  $("step").textContent = "";
  $("progress").value = 0;
  $("preview").hidden = true;
  $("preview").removeAttribute("src");
  $("result-figure").hidden = true;
  $("result").removeAttribute("src");
  $("result-bar").hidden = true;
  hideCompare();
  $("placeholder").hidden = false;
  $("logs").textContent = "";
  $("log-count").textContent = "";
  for (const toggle of form.querySelectorAll(".show-map")) {
    if (toggle.checked) { toggle.checked = false; toggle.dispatchEvent(new Event("change")); }
    toggle.disabled = true;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// History: the key's recent requests from the server (any browser, any client), with what this browser remembers
// of them (the full input, to reopen the form as it was); without a key, or from an older server, this browser's.

let serverHistory = null;  // null: not known; else [{id, prompt, input, state, at, thumb}] newest first
let historyTimer = 0;

const LISTED_STATE = { succeeded: "done", failed: "failed", canceled: "cancelled", queued: "queued", running: "running" };

async function refreshHistory() {
  if (!$("api-key").value.trim()) {
    serverHistory = null;
    renderHistory();
    return;
  }
  try {
    const res = await fetch(url(`${QUEUE}/requests?limit=${HISTORY_MAX}`), { headers: headers() });
    if (!res.ok) throw new Error(String(res.status));
    serverHistory = (await res.json()).requests.map((r) => ({
      id: r.request_id,
      prompt: r.input?.prompt || "",
      input: r.input,
      state: LISTED_STATE[String(r.state).toLowerCase()] || String(r.state).toLowerCase(),
      at: Date.parse(r.created_at),
      thumb: r.image_url || undefined,
    }));
  } catch {
    serverHistory = null;  // a wrong key says so where the user acts (Generate); the strip falls back quietly
  }
  renderHistory();
}

const refreshHistorySoon = () => {
  clearTimeout(historyTimer);
  historyTimer = setTimeout(refreshHistory, 300);
};

const loadHistory = () => JSON.parse(localStorage.getItem(HISTORY_STORE) || "[]");
const saveHistory = (items) => {
  localStorage.setItem(HISTORY_STORE, JSON.stringify(items.slice(0, HISTORY_MAX)));
  renderHistory();
};
// What this page learns first-hand (a submit, a final state) shows at once, before the next listing.
const remember = (entry) => {
  if (serverHistory) serverHistory = [entry, ...serverHistory.filter((e) => e.id !== entry.id)];
  saveHistory([entry, ...loadHistory().filter((e) => e.id !== entry.id)]);
};
const update = (id, changes) => {
  if (serverHistory) serverHistory = serverHistory.map((e) => (e.id === id ? { ...e, ...changes } : e));
  saveHistory(loadHistory().map((e) => (e.id === id ? { ...e, ...changes } : e)));
};

function historyEntries() {
  const local = loadHistory();
  if (!serverHistory) return local;
  const mine = new Map(local.map((e) => [e.id, e]));
  // The server knows the state; this browser may know the full input (the listing shortens data URIs).
  return serverHistory.map((e) => ({ ...mine.get(e.id), ...e, input: mine.get(e.id)?.input || e.input,
    thumb: e.thumb || mine.get(e.id)?.thumb }));
}

function renderHistory() {
  $("history-source").textContent = serverHistory ? "from this server" : "in this browser";
  const items = historyEntries().map((entry) => {
    const thumb = entry.thumb
      ? el("img", { src: entry.thumb, alt: "", loading: "lazy" })
      : el("span", { class: "empty" });
    const when = new Date(entry.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const button = el("button", { type: "button", class: "open", title: entry.prompt, "data-request": entry.id },
      thumb, el("span", { class: "caption", text: entry.prompt }),
      el("span", { class: `when ${entry.state || ""}`, text: `${when} · ${entry.state || "sent"}` }));
    button.addEventListener("click", () => reopen(entry));
    const title = serverHistory ? "Delete this request and its files on the server" : "Forget this request";
    const remove = el("button", { type: "button", class: "delete", title, "aria-label": title, text: "×",
      "data-delete": entry.id });
    remove.addEventListener("click", () => forget(entry));
    return el("li", {}, button, remove);
  });
  $("history").replaceChildren(...(items.length ? items : [el("li", { class: "muted", text: "Nothing yet." })]));
}

// Deleting from the strip deletes on the server (its input, result and files), not just from this browser.
async function forget(entry) {
  if (serverHistory) {
    const res = await call("DELETE", `${QUEUE}/requests/${entry.id}`);
    if (res.status === 400) {
      banner("That request is still queued or running: cancel it first, then delete it.");
      return;
    }
    if (!res.ok && res.status !== 404) { await showError(res); return; }
  }
  saveHistory(loadHistory().filter((e) => e.id !== entry.id));
  if (serverHistory) await refreshHistory();
}

function reopen(entry) {
  clearErrors();
  // A shortened data URI from the listing is no input to send again: leave that field empty.
  const input = Object.fromEntries(Object.entries(entry.input || {})
    .filter(([, v]) => !(typeof v === "string" && /^data:[^,]*,\.\.\. \(/.test(v))));
  writeInput(input);
  showTab("playground");
  follow(entry.id);
}

// ---------------------------------------------------------------------------------------------------------------
// API tab: snippets filled with the form's values and this server's URL

function python(value, indent = "") {
  const next = `${indent}    `;
  if (value === true || value === false) return value ? "True" : "False";
  if (value === null) return "None";
  if (typeof value === "object") {
    const items = Object.entries(value).map(([k, v]) => `${next}${JSON.stringify(k)}: ${python(v, next)},`);
    return `{\n${items.join("\n")}\n${indent}}`;
  }
  return JSON.stringify(value);
}

function snippets() {
  const base = baseUrl();
  const input = readInput();
  const json = JSON.stringify(input, null, 2).replace(/'/g, "'\\''");
  return {
    curl: `BASE=${base}
# Submit to the queue, wait until the request is COMPLETED, fetch the result (needs jq)
REQUEST_ID=$(curl -s -X POST "$BASE/${endpoint}" \\
  -H "Authorization: Key $FAL_KEY" -H "Content-Type: application/json" \\
  -d '${json}' | jq -r .request_id)
until curl -s "$BASE/${QUEUE}/requests/$REQUEST_ID/status" -H "Authorization: Key $FAL_KEY" \\
  | jq -e '.status == "COMPLETED"' > /dev/null; do sleep 1; done
curl -s "$BASE/${QUEUE}/requests/$REQUEST_ID" -H "Authorization: Key $FAL_KEY"`,
    python: `# pip install fal-client; reads FAL_KEY from the environment
import fal_client
import fal_client.client as fc

# Point fal-client at this server (set before the first call)
fc.QUEUE_URL_FORMAT = "${base}/"
fc.RUN_URL_FORMAT = "${base}/run/"
fc.REST_URL = fc.CDN_URL = "${base}"

result = fal_client.subscribe(
    "${endpoint}",
    arguments=${python(input, "    ")},
    with_logs=True,
    on_queue_update=print,
)
print(result["image"]["url"])`,
    js: `// npm install @fal-ai/client
import { fal } from "@fal-ai/client";

fal.config({
  credentials: process.env.FAL_KEY,
  proxyUrl: { url: "${base}/api/fal/proxy", when: "always" },
});

const result = await fal.subscribe("${endpoint}", {
  input: ${JSON.stringify(input, null, 2).replace(/\n/g, "\n  ")},
  logs: true,
  onQueueUpdate: (update) => console.log(update.status),
});
console.log(result.data.image.url);`,
  };
}

function renderSnippets() {
  const titles = { curl: "curl", python: "Python · fal-client", js: "JavaScript · @fal-ai/client" };
  const blocks = Object.entries(snippets()).map(([lang, code]) => {
    const pre = el("pre", { "data-snippet": lang }, el("code", { text: code }));
    const copy = el("button", { type: "button", class: "copy", text: "Copy" });
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(code);
      } catch {
        // Plain-HTTP pages on other hosts have no clipboard API: select the text for Ctrl+C instead.
        getSelection().selectAllChildren(pre);
      }
      copy.textContent = "Copied";
      setTimeout(() => { copy.textContent = "Copy"; }, 1500);
    });
    const head = el("div", { class: "snippet-head" }, el("h3", { text: titles[lang] }), copy);
    return el("div", { class: "snippet" }, head, pre);
  });
  $("snippets").replaceChildren(...blocks);
}

function showTab(name) {
  for (const button of document.querySelectorAll("[data-tab]")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === name));
  }
  $("tab-playground").hidden = name !== "playground";
  $("tab-api").hidden = name !== "api";
  if (name === "api") renderSnippets();
}

// ---------------------------------------------------------------------------------------------------------------

async function main() {
  const key = $("api-key");
  key.value = localStorage.getItem(KEY_STORE) || "";
  key.addEventListener("input", () => {
    localStorage.setItem(KEY_STORE, key.value.trim());
    banner("");  // a warning about the old key is stale now
    refreshHistorySoon();
  });
  $("compare-map").addEventListener("change", setCompare);
  $("compare-opacity").addEventListener("input", setCompare);
  for (const button of document.querySelectorAll("[data-tab]")) {
    button.addEventListener("click", () => showTab(button.dataset.tab));
  }
  renderHistory();
  refreshHistory();
  try {
    [fields, capabilities] = await Promise.all([loadSchema(), loadCapabilities()]);
  } catch (err) {
    banner(`Could not load the input schema from /openapi.json: ${err.message}`);
    return;
  }
  $("endpoint").textContent = endpoint;
  buildForm();
  form.addEventListener("submit", submit);
  form.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit(); });
  $("cancel").addEventListener("click", cancel);
  document.body.dataset.ready = "true";
}

main();
