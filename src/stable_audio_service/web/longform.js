// Long-form audio: in text to audio, a Duration above the model's longest clip (or above the Window, when set), up
// to GET /models `fields.longform.max_duration`, is made by the service as a chain of continuation windows. This
// module says so beside the form, offers the windows' length and overlap (bounds from GET /models), switches off
// what long-form audio cannot have (several takes, a loudness level; sources are the editing modes'), checks it
// all before sending, and words the progress ("window 2 of 3") and the result's facts.

import { $, fmt } from "./util.js";
import { state } from "./state.js";
import { blockTakes } from "./takes.js";
import { blockLoudness } from "./loudness.js";

const DEFAULT_OVERLAP_CAP = 10; // the service's default overlap is min(10, window / 4) unless GET /models says

// GET /models `fields.longform` ({max_duration, window_s, overlap_s, max_windows}), or null: this model cannot.
// A service that states only `capabilities.max_longform_s` gets the defaults for the rest.
export function longformFields() {
  if (!state.models) return null;
  const f = state.models.fields ? state.models.fields.longform : null;
  if (f && typeof f.max_duration === "number") return f;
  const c = state.models.capabilities || {};
  return typeof c.max_longform_s === "number" ? { max_duration: c.max_longform_s } : null;
}

function longest() {
  const lf = longformFields();
  const w = lf && lf.window_s ? lf.window_s.default : null;
  return typeof w === "number" ? w : state.models.fields.duration.maximum;
}

// The service's default overlap is min(cap, window / 4); GET /models states it as "min(10, window_s / 4)".
function overlapCap() {
  const said = longformFields().overlap_s;
  const m = said && typeof said.default === "string" ? said.default.match(/min\(\s*([\d.]+)/) : null;
  return m ? Number(m[1]) : DEFAULT_OVERLAP_CAP;
}

function defaultOverlap(window) {
  return Math.min(overlapCap(), window / 4);
}

function numberIn(id) {
  const input = $(id);
  if (input.validity.badInput) return NaN;
  return input.value.trim() === "" ? null : Number(input.value);
}

function durationAsked() {
  const v = numberIn("duration");
  return v === null ? state.models.fields.duration.default : v;
}

// The windows this form would ask for: {window, overlap, count, asked: {window_s, overlap_s}} when the request is
// long-form (text to audio, a duration above the window), else null. NaN where a box holds no number.
export function longformPlan() {
  if (!state.models || state.mode !== "text" || !longformFields()) return null;
  const duration = durationAsked();
  const askedWindow = numberIn("window_s");
  const askedOverlap = numberIn("overlap_s");
  const window = askedWindow === null ? longest() : askedWindow;
  if (!(duration > window) && !Number.isNaN(window)) return null;
  const overlap = askedOverlap === null ? defaultOverlap(window) : askedOverlap;
  const count = 1 + Math.max(0, Math.ceil((duration - window) / (window - overlap) - 1e-9));
  return { duration, window, overlap, count, asked: { window_s: askedWindow, overlap_s: askedOverlap } };
}

// The body's window_s / overlap_s, only where the request is long-form and the box was filled in.
export function longformBody(body) {
  const plan = longformPlan();
  if (!plan) return;
  if (plan.asked.window_s !== null) body.window_s = plan.asked.window_s;
  if (plan.asked.overlap_s !== null) body.overlap_s = plan.asked.overlap_s;
}

// The page's own checks of a long-form request, worded as the service's: [{field, msg}].
export function checkLongform(body) {
  const plan = longformPlan();
  if (!plan) return [];
  const lf = longformFields();
  const out = [];
  const w = lf.window_s || {};
  if (Number.isNaN(plan.window)) out.push({ field: "window_s", msg: "not a number" });
  else if ((w.minimum != null && plan.window < w.minimum) || (w.maximum != null && plan.window > w.maximum)) {
    const model = state.models.name ? ` for model ${state.models.name}` : "";
    out.push({ field: "window_s", msg: `must be between ${fmt(w.minimum)} and ${fmt(w.maximum)}${model}` });
  }
  if (Number.isNaN(plan.overlap)) out.push({ field: "overlap_s", msg: "not a number" });
  else if (!(plan.overlap > 0 && plan.overlap <= plan.window / 2) && Number.isFinite(plan.window)) {
    out.push({ field: "overlap_s", msg: `must be above 0 and at most half the window (${fmt(plan.window / 2)} s)` });
  }
  if (!out.length && lf.max_windows && plan.count > lf.max_windows) {
    const msg = `${plan.count} windows of ${fmt(plan.window)} s; at most ${lf.max_windows}: ask for longer windows`;
    out.push({ field: "window_s", msg });
  }
  if (out.length) $("longform-advanced").open = true; // the boxes the messages are beside
  return out;
}

// The duration hint's words about long-form audio, for the mode shown ("" where the model cannot).
export function longformDurationHint() {
  const lf = longformFields();
  if (!lf) return "";
  if (state.mode !== "text") return `; longer (long-form) audio is made from text only`;
  return `; longer, up to ${fmt(lf.max_duration)} s, as long-form audio`;
}

// After any change of the duration, the windows or the mode: the note, the duration's upper bound, and the
// controls long-form audio cannot have switched off (or on again) with the reason.
export function updateLongform() {
  const lf = longformFields();
  const box = $("longform-box");
  box.hidden = !lf || state.mode !== "text";
  if (!state.models) return;
  const plan = longformPlan();
  $("duration").max = lf && state.mode === "text" ? lf.max_duration : state.models.fields.duration.maximum;
  if (plan) {
    blockTakes("Long-form audio is made one take at a time: 1 take.");
    blockLoudness("Not with long-form audio (made window by window; a level needs the whole clip): as generated.");
  } else {
    blockTakes(null);
    blockLoudness(null);
  }
  if (!lf || state.mode !== "text") return;
  const note = $("longform-note");
  document.body.dataset.longform = plan ? "1" : "";
  if (plan && Number.isFinite(plan.count) && plan.count > 1) {
    note.textContent =
      `Long-form: ${plan.count} windows of ${fmt(plan.window)} s, each continuing the last ${fmt(plan.overlap)} s ` +
      "of the one before (crossfaded there); the progress counts every window's steps. Long-form audio is one " +
      "take, as generated (no loudness level), from text only.";
  } else if (plan) {
    note.textContent = "Long-form: these Window and Overlap make no chain of windows; Generate says what to change.";
  } else {
    const window = numberIn("window_s");
    const above = window === null || Number.isNaN(window) ? `${fmt(longest())} s` : `the Window (${fmt(window)} s)`;
    note.textContent =
      `Long-form: a Duration above ${above}, up to ${fmt(lf.max_duration)} s, is made as a chain of windows, ` +
      "each continuing the one before. One take, no loudness level, no source.";
  }
}

// GET /models: the windows' bounds and defaults as hints and placeholders.
export function applyLongform() {
  const lf = longformFields();
  if (!lf) {
    updateLongform();
    return;
  }
  const w = lf.window_s || {};
  const win = $("window_s");
  if (w.minimum != null) win.min = w.minimum;
  if (w.maximum != null) win.max = w.maximum;
  win.placeholder = fmt(longest());
  $("window_s-hint").textContent =
    `${fmt(w.minimum)}–${fmt(w.maximum)} s; empty: ${fmt(longest())} s (the longest clip). Each window's seed ` +
    "comes from the Seed, so the same seed makes the same long clip.";
  $("overlap_s").placeholder = "auto";
  $("overlap_s-hint").textContent =
    `Above 0, at most half the window; empty: a quarter of the window, at most ${fmt(overlapCap())} s.`;
  updateLongform();
}

export function wireLongform() {
  for (const id of ["duration", "window_s", "overlap_s"]) $(id).addEventListener("input", updateLongform);
}

// History's "Reuse settings": the windows the entry asked for (empty: the service's defaults).
export function restoreLongform(entry) {
  $("window_s").value = entry.window_s ?? "";
  $("overlap_s").value = entry.overlap_s ?? "";
  if (entry.window_s != null || entry.overlap_s != null) $("longform-advanced").open = true;
  updateLongform();
}

// "Step 5 of 12 · window 2 of 3": the SSE steps count over every window; `per` is one window's steps.
export function windowText(step, total, per) {
  if (!per || !total || total <= per || total % per) return "";
  const n = total / per;
  const k = Math.min(n, Math.max(1, Math.ceil(step / per)));
  return `window ${k} of ${n}`;
}

// The result's facts: "3 windows of 1 s, each continuing 0.25 s of the one before".
export function longformText(lf) {
  return `${lf.windows} windows of ${fmt(lf.window_s)} s, each continuing ${fmt(lf.overlap_s)} s of the one before`;
}
