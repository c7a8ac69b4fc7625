// The level of the result (the request's `loudness`): as generated, a -1 dBFS peak, or a target loudness in LUFS
// (ITU-R BS.1770), with its bounds from GET /models `fields.loudness`; its part of the request body, checked
// first; restoring it from history; and what the service did (`meta.loudness`), worded for the result's facts.

import { $, fmt } from "./util.js";
import { state } from "./state.js";

const DEFAULT_LUFS = -14; // the common streaming target, offered when "Target LUFS" is first chosen
let blocked = null; // why no level can be asked for now (long-form audio), or null

function bounds() {
  const f = state.models && state.models.fields ? state.models.fields.loudness : null;
  return f || null;
}

function showTarget() {
  const lufs = $("loudness-mode").value === "lufs";
  $("loudness").hidden = !lufs;
  if (lufs && $("loudness").value === "") $("loudness").value = DEFAULT_LUFS;
}

export function wireLoudness() {
  $("loudness-mode").addEventListener("change", showTarget);
}

// GET /models: the field's bounds and hint; a service without the field hides the control (nothing is sent).
export function applyLoudness() {
  const b = bounds();
  $("loudness-box").hidden = !b;
  if (!b) return;
  $("loudness").min = b.minimum;
  $("loudness").max = b.maximum;
  showHint();
  showTarget();
}

function showHint() {
  const b = bounds();
  if (!b) return;
  $("loudness-hint").textContent = blocked
    ? blocked
    : `Peak: the loudest sample at ${fmt(b.peak_dbfs)} dBFS. LUFS: ${fmt(b.minimum)} to ${fmt(b.maximum)} ` +
      `(streaming: about -14), the true peak kept under ${fmt(b.true_peak_ceiling_dbtp)} dBTP.`;
}

// Long-form audio takes no level: the control is switched off and says why (null: on again). What was chosen
// stays, for when the request is short again.
export function blockLoudness(why) {
  const mode = $("loudness-mode");
  const was = blocked;
  blocked = why || null;
  if (blocked && !was) {
    mode.dataset.kept = mode.value; // shown as "As generated" meanwhile: that is what long-form audio is
    mode.value = "none";
  } else if (!blocked && was) {
    mode.value = mode.dataset.kept || "none";
  }
  mode.disabled = !!blocked;
  $("loudness").disabled = !!blocked;
  showHint();
  showTarget();
}

// The body's `loudness`: undefined for "as generated" (the service's default, so nothing is sent), "peak", a
// number of LUFS, or NaN when the box holds no number (checkLoudness says so). Nothing while switched off.
export function loudnessBody() {
  if (!bounds() || blocked) return undefined;
  const mode = $("loudness-mode").value;
  if (mode === "peak") return "peak";
  if (mode !== "lufs") return undefined;
  const input = $("loudness");
  return input.validity.badInput || input.value.trim() === "" ? NaN : Number(input.value);
}

// The page's own check, worded as the service's: [{field, msg}] (empty when it may go).
export function checkLoudness(body) {
  const v = body.loudness;
  const b = bounds();
  if (typeof v !== "number" || !b) return [];
  if (!Number.isFinite(v)) return [{ field: "loudness", msg: "not a number" }];
  if (v < b.minimum || v > b.maximum) {
    return [{ field: "loudness", msg: `a LUFS target must be between ${fmt(b.minimum)} and ${fmt(b.maximum)}` }];
  }
  return [];
}

// History's "Reuse settings": the level the entry asked for.
export function restoreLoudness(asked) {
  const lufs = typeof asked === "number";
  const mode = lufs ? "lufs" : asked === "peak" ? "peak" : "none";
  if (blocked) $("loudness-mode").dataset.kept = mode; // shown once the request is short again
  else $("loudness-mode").value = mode;
  if (lufs) $("loudness").value = asked;
  showTarget();
}

function signed(db) {
  return `${db > 0 ? "+" : db < 0 ? "−" : ""}${fmt(Math.abs(db))} dB`;
}

// `meta.loudness` in words: "+5.9 dB to -14 LUFS (was -19.9 LUFS; true peak -2.1 dBTP)".
export function loudnessText(r) {
  const gain = signed(Number(r.gain_db.toFixed(2)));
  const to = r.mode === "peak" ? `to a ${fmt(r.target)} dBFS peak` : `toward ${fmt(r.target)} LUFS`;
  const parts = [];
  if (r.measured_lufs != null) parts.push(`was ${fmt(Number(r.measured_lufs.toFixed(1)))} LUFS`);
  if (r.output_lufs != null) parts.push(`now ${fmt(Number(r.output_lufs.toFixed(1)))} LUFS`);
  if (r.true_peak_dbtp != null) parts.push(`true peak ${fmt(Number(r.true_peak_dbtp.toFixed(1)))} dBTP`);
  const why = r.note ? ` ${r.note}.` : "";
  return `${gain} ${to}${parts.length ? ` (${parts.join("; ")})` : ""}.${why}`;
}
