// nervi-hpc viewer: sliders → /api/archives/<id>/frame → <img>. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const SLIDER_STEPS = 1000;        // resolution of a slider when unseen values are allowed
const MAX_TICKS = 64;             // grid ticks drawn under a slider
const ARCHITECTURES = { nervi: "NeRVI", nerv: "NeRV" };
const DRAG_STEP_PX = 24;          // mouse travel per grid step when dragging the image to orbit
const DRAG_DEGREES_PER_PX = 1;    // … and per pixel when unseen values are allowed

const state = {
  archives: [],
  archive: null,                  // facts of the archive shown (from /api/archives)
  values: [],                     // current value of each parameter
  active: 0,                      // parameter the arrow keys step
  free: false,                    // unseen (off-grid) values allowed
  playing: false,
  playToken: 0,                   // which play loop may run: a quick pause-play starts a new one
  mask: false,                    // show the decoded foreground mask instead of the image
  compare: "",                    // "", "truth" or "delta": shown beside the frame (with --store)
  shown: null,                    // key of the frame on screen
  framesShown: 0,
};

// ---------------------------------------------------------------------------------------------
// Numbers and grids

function fmt(v) {
  if (Number.isInteger(v)) return String(v);
  return String(Number(v.toPrecision(6)));
}

function nearestIndex(grid, v) {
  let best = 0;
  for (let i = 1; i < grid.length; i++) if (Math.abs(grid[i] - v) < Math.abs(grid[best] - v)) best = i;
  return best;
}

function onGrid(grid, v) {
  const span = Math.max(Math.abs(grid[grid.length - 1] - grid[0]), 1);
  return Math.abs(grid[nearestIndex(grid, v)] - v) <= 1e-9 * span;
}

// The grid value one step from v (dir ±1); off the grid, the neighbouring grid value that way.
function stepValue(grid, v, dir, wrap) {
  if (onGrid(grid, v)) {
    let i = nearestIndex(grid, v) + dir;
    if (wrap) i = (i + grid.length) % grid.length;
    return grid[Math.min(Math.max(i, 0), grid.length - 1)];
  }
  const ahead = dir > 0 ? grid.filter((g) => g > v) : grid.filter((g) => g < v).reverse();
  if (ahead.length) return ahead[0];
  return wrap ? (dir > 0 ? grid[0] : grid[grid.length - 1]) : v;
}

// ---------------------------------------------------------------------------------------------
// Frames: one request in flight; while it runs, newer slider positions replace each other, so the
// screen always converges on the latest position without queueing stale frames.

let pumping = false;
const waiters = [];

function frameKey() {
  return `${state.archive.id}|${state.values.join(",")}${state.mask ? "|mask" : ""}`;
}

function frameUrl(values = state.values, layer = state.mask ? "mask" : "image") {
  const q = new URLSearchParams();
  state.archive.parameters.forEach((p, j) => q.set(p.name, String(values[j])));
  if (layer !== "image") q.set("layer", layer);
  // prefetch hints: the server decodes next the frames this position is likeliest to be left for
  if (state.playing) q.set("play", state.archive.parameters[Number($("play-param").value)].name);
  else q.set("active", state.archive.parameters[state.active].name);
  return `/api/archives/${encodeURIComponent(state.archive.id)}/frame?${q}`;
}

function refresh() {
  return new Promise((resolve) => {
    waiters.push(resolve);
    if (!pumping) pump();
  });
}

async function pump() {
  pumping = true;
  while (state.archive && frameKey() !== state.shown) {
    const key = frameKey();
    const values = state.values.slice();
    try {
      await load(frameUrl(), key, values);
    } catch (err) {
      showStatus(err.message, true);
      break;
    }
  }
  pumping = false;
  waiters.splice(0).forEach((resolve) => resolve());
}

async function load(url, key, values) {
  const started = performance.now();
  const response = await fetch(url);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  const blob = await response.blob();
  const src = URL.createObjectURL(blob);
  const staging = new Image();
  staging.src = src;
  await staging.decode();
  const img = $("frame");
  const old = img.src;
  img.src = src;
  img.hidden = false;
  $("placeholder").hidden = true;
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  state.shown = key;
  state.framesShown += 1;
  img.dataset.key = key;
  img.dataset.count = String(state.framesShown);
  fitImage();
  showCaption(values, response.headers, performance.now() - started);
  showStatus("");
  shareView(values);
  await showCompared(values);
}

// The ground truth or ΔE map beside the frame; hidden (with a note) off the store's images.
async function showCompared(values) {
  const img = $("compared");
  const old = img.src;
  img.hidden = true;
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  if (!state.compare) return;
  const response = await fetch(frameUrl(values, state.compare));
  if (!response.ok) {
    showStatus(`no ${state.compare === "truth" ? "ground truth" : "ΔE"} here: a view off the training grid`);
    return;
  }
  img.src = URL.createObjectURL(await response.blob());
  await img.decode();
  img.hidden = false;
  img.dataset.key = `${state.archive.id}|${values.join(",")}|${state.compare}`;
  fitImage();
}

// The view in the page's address (#archive=…&t=…&theta=…&phi=…[&mask=1]): copy it to share it.
function shareView(values) {
  const q = new URLSearchParams({ archive: state.archive.name });
  state.archive.parameters.forEach((p, j) => q.set(p.name, String(values[j])));
  if (state.mask) q.set("mask", "1");
  history.replaceState(null, "", `#${q}`);
  const save = $("save");
  save.href = $("frame").src;
  save.download = `${state.archive.name}_${state.archive.parameters.map((p, j) => `${p.name}${fmt(values[j])}`).join("_")}` +
    `${state.mask ? "_mask" : ""}.png`;
}

// The values of a shared address for archive `a`, or null where it names another archive or none.
function sharedValues(a) {
  const q = new URLSearchParams(location.hash.slice(1));
  if (q.get("archive") !== a.name) return null;
  state.mask = q.get("mask") === "1";
  return a.parameters.map((p, j) => {
    const v = Number(q.get(p.name));
    return q.has(p.name) && Number.isFinite(v) ? v : state.values[j];
  });
}

function showCaption(values, headers, roundTripMs) {
  const params = state.archive.parameters;
  $("frame-params").innerHTML = params
    .map((p, j) => `<span class="pv${onGrid(p.grid, values[j]) ? "" : " off"}"><b>${escapeHtml(p.name)}</b> ${fmt(values[j])}</span>`)
    .join("");
  const unseen = headers.get("X-Unseen") === "true";
  $("unseen-badge").hidden = !unseen;
  $("frame").dataset.unseen = String(unseen);
  const decode = Number(headers.get("X-Decode-Ms"));
  const encode = Number(headers.get("X-Encode-Ms"));
  const batch = Number(headers.get("X-Batch"));
  const hit = headers.get("X-Cache") === "hit";
  const batchNote = batch > 1 ? ` (share of a batch of ${batch})` : "";
  $("frame-timing").innerHTML =
    `<span class="${hit ? "hit" : "miss"}">${hit ? "cached" : "decoded now"}</span>` +
    ` · decode ${decode.toFixed(1)} ms${batchNote} · encode ${encode.toFixed(1)} ms` +
    ` · ${roundTripMs.toFixed(0)} ms to screen`;
}

function showStatus(message, isError) {
  const el = $("status");
  el.textContent = message;
  el.classList.toggle("error", Boolean(isError));
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// Integer zoom (crisp pixels) when the image is smaller than the stage; fit it when larger.
function fitImage() {
  const img = $("frame");
  const box = $("canvas").getBoundingClientRect();
  const a = state.archive;
  if (!a || !box.width) return;
  const side = state.compare ? 2 : 1;  // two images side by side share the width
  const fit = Math.min((box.width - 32 * side) / (a.width * side), (box.height - 32) / a.height);
  const scale = fit >= 1 ? Math.floor(fit) : fit;
  for (const shown of [img, $("compared")]) {
    shown.style.width = `${Math.round(a.width * scale)}px`;
    shown.style.height = `${Math.round(a.height * scale)}px`;
    shown.classList.toggle("pixelated", scale >= 2);
  }
}

// ---------------------------------------------------------------------------------------------
// Controls

function sliderOf(j) {
  return document.querySelector(`input[data-param="${j}"]`);
}

function buildSliders() {
  const box = $("sliders");
  box.innerHTML = "";
  state.archive.parameters.forEach((p, j) => {
    const row = document.createElement("div");
    row.className = "slider-row";
    row.dataset.param = String(j);
    const fixed = p.grid.length < 2 && p.low === p.high;
    row.innerHTML = `
      <div class="slider-head">
        <span class="pname">${escapeHtml(p.name)}</span>
        <span class="pvalue" id="value-${j}"></span>
      </div>
      <input type="range" data-param="${j}" aria-label="${escapeHtml(p.name)}" ${fixed ? "disabled" : ""}>
      <div class="ticks" id="ticks-${j}"></div>
      <div class="slider-foot"><span>${fmt(p.low)}</span><span id="count-${j}" class="muted"></span><span>${fmt(p.high)}</span></div>`;
    box.appendChild(row);
    const input = row.querySelector("input");
    input.addEventListener("input", () => { state.active = j; readSlider(j); markActive(); refresh(); });
    input.addEventListener("focus", () => { state.active = j; markActive(); });
    row.addEventListener("pointerdown", () => { state.active = j; markActive(); });
  });
  configureSliders();
  markActive();
}

// Snapping: the slider runs over grid indices. Free: over the range, in SLIDER_STEPS steps.
function configureSliders() {
  state.archive.parameters.forEach((p, j) => {
    const input = sliderOf(j);
    if (state.free && p.high > p.low) {
      input.min = String(p.low);
      input.max = String(p.high);
      input.step = String((p.high - p.low) / SLIDER_STEPS);
    } else {
      input.min = "0";
      input.max = String(p.grid.length - 1);
      input.step = "1";
    }
    drawTicks(j);
  });
  writeSliders();
}

function drawTicks(j) {
  const p = state.archive.parameters[j];
  const ticks = $(`ticks-${j}`);
  ticks.innerHTML = "";
  if (p.grid.length > MAX_TICKS || p.grid.length < 2) return;
  p.grid.forEach((g, i) => {
    const t = document.createElement("span");
    const at = state.free && p.high > p.low ? (g - p.low) / (p.high - p.low) : i / (p.grid.length - 1);
    t.style.left = `${(100 * at).toFixed(3)}%`;
    ticks.appendChild(t);
  });
}

function readSlider(j) {
  const p = state.archive.parameters[j];
  const raw = Number(sliderOf(j).value);
  if (state.free && p.high > p.low) {
    // a value within half a slider step of a grid value is that grid value
    const g = p.grid[nearestIndex(p.grid, raw)];
    state.values[j] = Math.abs(g - raw) <= (p.high - p.low) / SLIDER_STEPS / 2 ? g : raw;
  } else {
    state.values[j] = p.grid[Math.round(raw)];
  }
  writeLabels();
}

function writeSliders() {
  state.archive.parameters.forEach((p, j) => {
    const input = sliderOf(j);
    input.value = String(state.free && p.high > p.low ? state.values[j] : nearestIndex(p.grid, state.values[j]));
  });
  writeLabels();
}

function writeLabels() {
  state.archive.parameters.forEach((p, j) => {
    const v = state.values[j];
    const seen = onGrid(p.grid, v);
    const label = $(`value-${j}`);
    label.textContent = fmt(v);
    label.classList.toggle("off", !seen);
    $(`count-${j}`).textContent = seen
      ? `${nearestIndex(p.grid, v) + 1} / ${p.grid.length}`
      : `off grid (${p.grid.length} values)`;
  });
}

function markActive() {
  document.querySelectorAll(".slider-row").forEach((row) => {
    row.classList.toggle("active", Number(row.dataset.param) === state.active);
  });
}

function setValue(j, v) {
  state.values[j] = v;
  writeSliders();
  return refresh();
}

// A periodic parameter (φ) always wraps round: the last grid value is next to the first.
function step(j, dir, wrap) {
  const p = state.archive.parameters[j];
  return setValue(j, stepValue(p.grid, state.values[j], dir, wrap || p.period != null));
}

// ---------------------------------------------------------------------------------------------
// Drag the image to orbit: horizontal moves φ (round the orbit), vertical moves θ.

function orbitAxes() {
  const names = state.archive.parameters.map((p) => p.name);
  return { x: names.indexOf("phi"), y: names.indexOf("theta") };
}

function dragBy(j, pixels) {
  const p = state.archive.parameters[j];
  if (state.free && p.high > p.low) {
    let v = state.values[j] + pixels * DRAG_DEGREES_PER_PX;
    v = p.period != null ? p.low + ((((v - p.low) % p.period) + p.period) % p.period)
                         : Math.min(Math.max(v, p.low), p.high);
    state.values[j] = v;
    return pixels;
  }
  const steps = Math.trunc(pixels / DRAG_STEP_PX);
  for (let k = 0; k < Math.abs(steps); k++) {
    state.values[j] = stepValue(p.grid, state.values[j], Math.sign(steps), p.period != null);
  }
  return steps * DRAG_STEP_PX;
}

function enableDrag() {
  const canvas = $("canvas");
  let last = null;
  canvas.addEventListener("pointerdown", (e) => {
    if (!state.archive) return;
    last = { x: e.clientX, y: e.clientY };
    canvas.setPointerCapture(e.pointerId);
    e.preventDefault();
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const { x, y } = orbitAxes();
    const used = { x: 0, y: 0 };
    if (x >= 0) used.x = dragBy(x, e.clientX - last.x);
    if (y >= 0) used.y = dragBy(y, e.clientY - last.y);
    last = { x: last.x + used.x, y: last.y + used.y };  // leftover travel counts towards the next step
    if (used.x || used.y) { writeSliders(); refresh(); }
  });
  const end = () => { last = null; };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
}

// ---------------------------------------------------------------------------------------------
// Play: step the chosen parameter, wait for its frame, keep to the chosen rate.

async function play(token) {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  let frames = 0;
  const start = performance.now();
  while (state.playing && token === state.playToken) {
    const t0 = performance.now();
    await step(Number($("play-param").value), +1, true);
    frames += 1;
    const seconds = (performance.now() - start) / 1000;
    $("play-rate").textContent = `playing at ${(frames / seconds).toFixed(1)} frames/s`;
    const wait = 1000 / Number($("fps").value) - (performance.now() - t0);
    if (wait > 0) await sleep(wait);
  }
}

function setPlaying(on) {
  const animatable = state.archive && state.archive.parameters.some((p) => p.grid.length > 1);
  state.playing = Boolean(on && animatable);
  state.playToken += 1;  // a loop still waiting on its frame from before a pause ends there
  const button = $("play");
  button.textContent = state.playing ? "❚❚ Pause" : "▶ Play";
  button.setAttribute("aria-pressed", String(state.playing));
  button.classList.toggle("on", state.playing);
  if (state.playing) play(state.playToken);
  else $("play-rate").textContent = "";
}

function buildPlayChoices() {
  const select = $("play-param");
  select.innerHTML = "";
  const params = state.archive.parameters;
  params.forEach((p, j) => {
    if (p.grid.length > 1) select.add(new Option(`${p.name} (${p.grid.length})`, String(j)));
  });
  // default: the parameter with the most grid values (e.g. the azimuth of a camera orbit)
  let best = -1;
  params.forEach((p, j) => { if (p.grid.length > 1 && (best < 0 || p.grid.length > params[best].grid.length)) best = j; });
  if (best >= 0) select.value = String(best);
  $("play").disabled = best < 0;
}

// ---------------------------------------------------------------------------------------------
// Facts

function showFacts() {
  const a = state.archive;
  const mb = a.bytes >= 1e6 ? `${(a.bytes / 1e6).toFixed(2)} MB` : `${(a.bytes / 1e3).toFixed(1)} kB`;
  const psnr = a.psnr_db == null ? "n/a" : `${a.psnr_db.toFixed(2)} dB <span class="muted">(${a.psnr_from})</span>`;
  const minutes = a.training.seconds == null ? null : a.training.seconds / 60;
  const rows = [
    ["Images", `${a.count.toLocaleString()} · ${a.width} × ${a.height} px`],
    ["Mode", a.mode === "unknown" ? "<span class=\"muted\">not recorded</span>" : escapeHtml(a.mode.toUpperCase())],
    ["Parameters", a.parameters.map((p) => `${escapeHtml(p.name)} <span class="muted">×${p.grid.length}</span>`).join(" · ")],
    ["Archive", `${mb} <span class="muted">${escapeHtml(a.file)}</span>`],
    ["Compression", `<b>${a.compression_ratio.toFixed(1)}×</b> <span class="muted">vs raw RGB</span>`],
    ["PSNR", psnr],
    ["Quantization", `${a.bits} bits` + (a.bits_per_weight ? ` <span class="muted">· ${a.bits_per_weight.toFixed(2)} bits/weight</span>` : "")],
    ["Model", `${ARCHITECTURES[a.model.arch] || escapeHtml(a.model.arch)} c1=${a.model.c1} c2=${a.model.c2}` + (a.weights ? ` <span class="muted">· ${a.weights.toLocaleString()} weights</span>` : "")],
    ["Training", [a.training.epochs != null ? `${a.training.epochs} epochs` : null,
                  minutes != null ? `${minutes.toFixed(1)} min` : null].filter(Boolean).join(" · ") || "n/a"],
    ["Decoding on", escapeHtml(a.device)],
  ];
  if (a.source) rows.push(["Source", `<span class="muted">${escapeHtml(a.source)}</span>`]);
  $("facts").innerHTML = rows.map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join("");
}

// ---------------------------------------------------------------------------------------------
// Archives

function selectArchive(index) {
  const previous = state.archive;
  const a = state.archives[index];
  const kept = {};
  if (previous) previous.parameters.forEach((p, j) => { kept[p.name] = state.values[j]; });
  state.archive = a;
  state.shown = null;
  // keep a value the archives share (IR and DVR of one data set), else start mid-grid
  state.values = a.parameters.map((p) => {
    const v = kept[p.name];
    if (v !== undefined && v >= p.low && v <= p.high) return state.free ? v : p.grid[nearestIndex(p.grid, v)];
    return p.grid[Math.floor((p.grid.length - 1) / 2)];
  });
  state.values = sharedValues(a) || state.values;
  $("mask").checked = state.mask;
  $("compare").hidden = !a.truth;
  if (!a.truth) state.compare = "";
  $("compare").value = state.compare;
  state.active = Math.min(state.active, a.parameters.length - 1);
  $("archive").value = String(index);
  document.title = `${a.name} · nervi-hpc viewer`;
  buildSliders();
  buildPlayChoices();
  showFacts();
  return refresh();
}

async function start() {
  try {
    const response = await fetch("/api/archives");
    state.archives = (await response.json()).archives;
  } catch (err) {
    showStatus(`cannot reach the viewer server: ${err.message}`, true);
    return;
  }
  const select = $("archive");
  state.archives.forEach((a, i) => {
    const mode = a.mode === "unknown" ? "" : ` · ${a.mode.toUpperCase()}`;
    select.add(new Option(`${a.name}${mode} · ${a.width}×${a.height}`, String(i)));
  });
  select.disabled = state.archives.length < 2;
  select.addEventListener("change", () => selectArchive(Number(select.value)));
  $("free").addEventListener("change", (e) => {
    state.free = e.target.checked;
    if (!state.free) {
      state.values = state.values.map((v, j) => state.archive.parameters[j].grid[nearestIndex(state.archive.parameters[j].grid, v)]);
    }
    configureSliders();
    refresh();
  });
  $("play").addEventListener("click", () => setPlaying(!state.playing));
  $("mask").addEventListener("change", (e) => { state.mask = e.target.checked; refresh(); });
  $("compare").addEventListener("change", (e) => {
    state.compare = e.target.value;
    e.target.blur();
    showCompared(state.values);
  });
  enableDrag();
  // once a choice is made, hand the arrow keys back to the grid
  for (const id of ["archive", "play-param", "fps"]) $(id).addEventListener("change", (e) => e.target.blur());
  document.addEventListener("keydown", onKey);
  window.addEventListener("resize", fitImage);
  const shared = new URLSearchParams(location.hash.slice(1)).get("archive");
  await selectArchive(Math.max(state.archives.findIndex((a) => a.name === shared), 0));
}

function onKey(e) {
  if (!state.archive || e.altKey || e.ctrlKey || e.metaKey) return;
  if (e.target instanceof HTMLSelectElement) return;
  const n = state.archive.parameters.length;
  const handled = {
    ArrowLeft: () => step(state.active, -1, false),
    ArrowRight: () => step(state.active, +1, false),
    ArrowUp: () => { state.active = (state.active + n - 1) % n; markActive(); },
    ArrowDown: () => { state.active = (state.active + 1) % n; markActive(); },
    Home: () => setValue(state.active, state.archive.parameters[state.active].grid[0]),
    End: () => { const g = state.archive.parameters[state.active].grid; setValue(state.active, g[g.length - 1]); },
    " ": () => setPlaying(!state.playing),
  }[e.key];
  if (handled) {
    e.preventDefault();
    handled();
  } else if (/^[1-9]$/.test(e.key) && Number(e.key) <= state.archives.length) {
    selectArchive(Number(e.key) - 1);
  }
}

start();
