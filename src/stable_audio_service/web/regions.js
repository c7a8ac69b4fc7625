// The source's waveform as an editor: the regions to regenerate (dragged on the waveform or typed in the
// list), the playhead, and the source's pictures with what the request will do to each stretch shaded.

import { $, round2 } from "./util.js";
import { state } from "./state.js";
import { outputSeconds, viewSeconds } from "./duration.js";
import { drawSpectrogram, drawWaveform } from "./draw.js";

const MAX_REGIONS = 16; // the service's cap on inpaint_regions
const MIN_REGION_S = 0.05;

let dragging = null; // the pointer drag in progress on the waveform

export function showRegionsError(message) {
  $("regions-error").textContent = message;
  $("regions-error").hidden = !message;
}

function regionText(r) {
  return `${r.start.toFixed(2)}–${r.end.toFixed(2)} s`;
}

export function renderRegions() {
  renderRegionOverlay();
  const ol = $("regions");
  ol.replaceChildren(
    ...state.regions.map((r, i) => {
      const li = document.createElement("li");
      const title = document.createElement("span");
      title.className = "region-name";
      title.textContent = `Region ${i + 1}`;
      const field = (key, word) => {
        const label = document.createElement("label");
        const hidden = document.createElement("span");
        hidden.className = "visually-hidden";
        hidden.textContent = `Region ${i + 1} `;
        const input = document.createElement("input");
        input.type = "number";
        input.step = "0.01";
        input.min = "0";
        input.inputMode = "decimal";
        input.value = r[key].toFixed(2);
        input.dataset.i = String(i);
        input.dataset.key = key;
        input.addEventListener("input", () => editRegion(input));
        input.addEventListener("change", () => editRegion(input, true));
        label.append(hidden, `${word} (s)`, input);
        return label;
      };
      const length = document.createElement("span");
      length.className = "hint region-length";
      length.textContent = `${(r.end - r.start).toFixed(2)} s`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "secondary small";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove region ${i + 1} (${regionText(r)})`);
      remove.addEventListener("click", () => removeRegion(i));
      li.append(title, field("start", "start"), field("end", "end"), length, remove);
      return li;
    }),
  );
  $("region-clear").hidden = state.regions.length === 0;
  $("region-add").disabled = !state.source || state.regions.length >= MAX_REGIONS;
}

// The shaded spans over the waveform; positions in % so they follow any resize.
function renderRegionOverlay() {
  const layer = $("region-layer");
  for (const el of layer.querySelectorAll(".region")) el.remove();
  const view = viewSeconds();
  state.regions.forEach((r, i) => {
    const el = document.createElement("div");
    el.className = "region";
    el.dataset.i = String(i);
    el.style.left = `${(r.start / view) * 100}%`;
    el.style.width = `${((r.end - r.start) / view) * 100}%`;
    const label = document.createElement("span");
    label.className = "region-label";
    label.textContent = `${i + 1}: ${regionText(r)}`;
    const x = document.createElement("span");
    x.className = "region-x";
    x.textContent = "×";
    x.title = "Remove this region";
    const left = document.createElement("span");
    left.className = "edge";
    left.dataset.edge = "start";
    const right = document.createElement("span");
    right.className = "edge";
    right.dataset.edge = "end";
    el.append(left, label, x, right);
    layer.append(el);
  });
  // keep the list's numbers in step while dragging (without rebuilding inputs a person types in)
  for (const input of $("regions").querySelectorAll("input")) {
    const r = state.regions[Number(input.dataset.i)];
    if (r && document.activeElement !== input) input.value = r[input.dataset.key].toFixed(2);
  }
  $("regions").querySelectorAll(".region-length").forEach((el, i) => {
    const r = state.regions[i];
    if (r) el.textContent = `${(r.end - r.start).toFixed(2)} s`;
  });
}

function editRegion(input, commit = false) {
  const i = Number(input.dataset.i);
  const r = state.regions[i];
  if (!r) return;
  const v = Number(input.value);
  const other = input.dataset.key === "start" ? r.end : r.start;
  const view = viewSeconds();
  let problem = "";
  if (input.value.trim() === "" || !Number.isFinite(v)) problem = "not a number";
  else if (v < 0) problem = "must be 0 or more";
  else if (input.dataset.key === "start" && v >= other) problem = `must be before the end (${other.toFixed(2)} s)`;
  else if (input.dataset.key === "end" && v <= other) problem = `must be after the start (${other.toFixed(2)} s)`;
  else if (v > view + 1e-9) problem = `must be within the clip (${view.toFixed(2)} s)`;
  if (problem) {
    input.setAttribute("aria-invalid", "true");
    showRegionsError(`Region ${i + 1} ${input.dataset.key}: ${problem}`);
    if (commit) input.value = r[input.dataset.key].toFixed(2);
    return;
  }
  input.removeAttribute("aria-invalid");
  showRegionsError("");
  r[input.dataset.key] = v;
  renderRegionOverlay();
}

function removeRegion(i) {
  state.regions.splice(i, 1);
  showRegionsError("");
  renderRegions();
}

function addRegion() {
  if (!state.source) return;
  if (state.regions.length >= MAX_REGIONS) {
    showRegionsError(`At most ${MAX_REGIONS} regions.`);
    return;
  }
  const view = viewSeconds();
  const len = Math.max(MIN_REGION_S, round2(view / 5));
  // the first free stretch, scanning from the middle
  let start = round2(view / 2 - len / 2);
  const sorted = [...state.regions].sort((a, b) => a.start - b.start);
  for (const r of sorted) if (start < r.end && start + len > r.start) start = round2(r.end);
  if (start + len > view) start = Math.max(0, round2(view - len));
  state.regions.push({ start, end: round2(Math.min(view, start + len)) });
  renderRegions();
  const inputs = $("regions").querySelectorAll("input");
  if (inputs.length) inputs[inputs.length - 2].focus();
}

function layerTime(e) {
  const rect = $("region-layer").getBoundingClientRect();
  const view = viewSeconds();
  return Math.max(0, Math.min(view, ((e.clientX - rect.left) / Math.max(1, rect.width)) * view));
}

function onLayerDown(e) {
  if (!state.source || e.button !== 0) return;
  const t = layerTime(e);
  const layer = $("region-layer");
  if (state.mode !== "inpaint") {
    seekSource(t);
    return;
  }
  const el = e.target.closest(".region");
  let drag;
  if (el) {
    const i = Number(el.dataset.i);
    if (e.target.classList.contains("region-x")) {
      e.preventDefault();
      removeRegion(i);
      return;
    }
    const r = state.regions[i];
    if (e.target.classList.contains("edge")) drag = { kind: e.target.dataset.edge, i };
    else drag = { kind: "move", i, offset: t - r.start, len: round2(r.end - r.start) };
  } else {
    if (state.regions.length >= MAX_REGIONS) {
      showRegionsError(`At most ${MAX_REGIONS} regions; remove one first.`);
      seekSource(t);
      return;
    }
    const start = round2(t);
    state.regions.push({ start, end: start });
    drag = { kind: "create", i: state.regions.length - 1, anchor: start, x0: e.clientX };
  }
  e.preventDefault();
  layer.setPointerCapture(e.pointerId);
  dragging = drag;
  showRegionsError("");
  layer.classList.add("dragging");
}

function onLayerMove(e) {
  const d = dragging;
  if (!d) return;
  const view = viewSeconds();
  const t = round2(layerTime(e));
  const r = state.regions[d.i];
  if (d.kind === "create") {
    r.start = Math.min(d.anchor, t);
    r.end = Math.max(d.anchor, t);
  } else if (d.kind === "start") {
    r.start = Math.max(0, Math.min(t, round2(r.end - MIN_REGION_S)));
  } else if (d.kind === "end") {
    r.end = Math.min(view, Math.max(t, round2(r.start + MIN_REGION_S)));
  } else {
    r.start = round2(Math.max(0, Math.min(view - d.len, layerTime(e) - d.offset)));
    r.end = round2(r.start + d.len);
  }
  if (d.kind === "create" && state.regions.length !== $("regions").children.length) renderRegions();
  else renderRegionOverlay();
}

function onLayerUp(e) {
  const d = dragging;
  if (!d) return;
  dragging = null;
  $("region-layer").classList.remove("dragging");
  const r = state.regions[d.i];
  if (d.kind === "create" && (Math.abs(e.clientX - d.x0) < 4 || r.end - r.start < MIN_REGION_S)) {
    state.regions.splice(d.i, 1); // a click, not a drag: move the playhead instead
    seekSource(d.anchor);
  }
  state.regions.sort((a, b) => a.start - b.start);
  renderRegions();
}

function seekSource(t) {
  const player = $("source-player");
  if (player.readyState >= 1) player.currentTime = t;
  movePlayhead();
}

let playheadFrame = 0;
function movePlayhead() {
  const player = $("source-player");
  if (!state.source) return;
  $("playhead").style.left = `${(Math.min(player.currentTime || 0, viewSeconds()) / viewSeconds()) * 100}%`;
  cancelAnimationFrame(playheadFrame); // one animation loop, however many events asked for one
  playheadFrame = player.paused ? 0 : requestAnimationFrame(movePlayhead);
}

// The source's pictures, on the output's timeline: what the request will do to each stretch is shaded.
function sourceZones() {
  const s = state.source;
  const zones = [];
  if (!s || state.mode === "text") return zones;
  const d = outputSeconds();
  if (d > s.seconds + 1e-3) {
    if (state.mode === "inpaint") zones.push({ from: s.seconds, to: d, kind: "new", label: "new (continuation)" });
    else zones.push({ from: s.seconds, to: d, kind: "cut", label: "silence (padded)" });
  } else if (d < s.seconds - 1e-3) {
    zones.push({ from: d, to: s.seconds, kind: "cut", label: "not used (after Duration)" });
  }
  return zones;
}

let spectrogramTimer = null;

// `spectrogram: false` (while Duration is typed): the waveform at once, the spectrogram (slower; it spans the
// same timeline) once the typing pauses.
export function drawSource({ spectrogram = true } = {}) {
  if (!state.source || $("source").hidden) return;
  const view = viewSeconds();
  drawWaveform($("source-waveform"), state.source.decoded, { view, zones: sourceZones() });
  clearTimeout(spectrogramTimer);
  const spec = () => state.source && drawSpectrogram($("source-spectrogram"), state.source.decoded, { view: viewSeconds() });
  if (spectrogram) spec();
  else spectrogramTimer = setTimeout(spec, 200);
  renderRegionOverlay();
  movePlayhead();
  const caption = $("source-wave-caption");
  caption.textContent =
    state.mode === "inpaint"
      ? `Timeline 0–${view.toFixed(2)} s (the output's). Shaded spans are regenerated.`
      : state.mode === "a2a"
        ? "The whole clip is redrawn from the source; click to move the playhead."
        : "";
}

// The waveform's pointer handling, the list's buttons and the playhead's player.
export function wireRegions() {
  const layer = $("region-layer");
  layer.addEventListener("pointerdown", onLayerDown);
  layer.addEventListener("pointermove", onLayerMove);
  layer.addEventListener("pointerup", onLayerUp);
  layer.addEventListener("pointercancel", onLayerUp);
  $("region-add").addEventListener("click", addRegion);
  $("region-clear").addEventListener("click", () => {
    state.regions = [];
    showRegionsError("");
    renderRegions();
  });
  const sp = $("source-player");
  for (const ev of ["play", "seeked", "timeupdate"]) sp.addEventListener(ev, movePlayhead);
}
