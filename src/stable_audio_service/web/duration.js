// The output's duration in the editing modes: its bounds, starting it from the source's length, the hint
// under the field (with long-form's bound in text to audio), and the timeline (in seconds) that the source and
// its regions are drawn on.

import { $, fmt } from "./util.js";
import { state } from "./state.js";
import { longformDurationHint, updateLongform } from "./longform.js";

function durationBounds() {
  const f = state.models.fields.duration;
  const max = Math.min(f.maximum, state.caps ? state.caps.maxDuration : f.maximum);
  return { min: f.minimum, max };
}

// Editing starts from the source's length, within the model's limits (floored to 1 ms: a duration a
// hair longer than the source would ask for a continuation nobody wanted).
export function sourceDuration() {
  if (!state.source || !state.models) return;
  const { min, max } = durationBounds();
  const d = Math.min(max, Math.max(min, Math.floor(state.source.seconds * 1000) / 1000));
  $("duration").value = d;
}

export function outputSeconds() {
  const v = Number($("duration").value);
  if ($("duration").value.trim() !== "" && Number.isFinite(v) && v > 0) return v;
  return state.models ? state.models.fields.duration.default : 0;
}

export function durationHint() {
  if (!state.models) return;
  const f = state.models.fields.duration;
  let text = `${fmt(f.minimum)}–${fmt(f.maximum)} s, default ${fmt(f.default)}`;
  if (state.mode === "text") text += longformDurationHint();
  if (state.mode !== "text" && state.source) {
    text = `${fmt(f.minimum)}–${fmt(durationBounds().max)} s · source ${state.source.seconds.toFixed(2)} s`;
    if (state.mode === "inpaint" && state.caps.continuation) text += "; longer continues it";
    if (state.mode === "a2a") text += "; longer pads it with silence";
  }
  $("duration-hint").textContent = text;
  const note = $("continuation-note");
  if (state.mode === "inpaint" && state.source) {
    const d = outputSeconds();
    const s = state.source.seconds;
    if (d > s + 1e-3 && state.caps.continuation) {
      note.textContent = `Continuation: ${(d - s).toFixed(2)} s after the source's end (${s.toFixed(2)} s) will be generated.`;
    } else if (state.caps.continuation) {
      note.textContent = `Continuation: set Duration longer than the source (${s.toFixed(2)} s) to generate a new tail.`;
    } else {
      note.textContent = "";
    }
    if (d < s - 1e-3) note.textContent += ` The output is ${fmt(d)} s: the source after that is cut.`;
  } else {
    note.textContent = "";
  }
  updateLongform(); // the mode or the duration changed: long-form's note and what it switches off
}

export function viewSeconds() {
  if (!state.source) return 1;
  if (state.mode === "text") return state.source.seconds;
  return Math.max(state.source.seconds, outputSeconds());
}
