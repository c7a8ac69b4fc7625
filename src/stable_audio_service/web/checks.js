// The form's checks before anything is sent: a prompt that is not blank, and every number within the loaded
// model's bounds from GET /models (`fields`), worded as the service words its own refusal. No DOM changes: the
// caller shows what comes back (messages.showProblems).

import { fmt } from "./util.js";
import { state } from "./state.js";

const INTEGERS = new Set(["num_inference_steps", "seed"]);

// body: the request read from the form (form.readForm); bad: the numeric fields the browser could not read.
// Returns [{field, msg}] in the form's order; empty when the request may go.
export function checkForm(body, bad = []) {
  const out = [];
  if (!body.prompt || !body.prompt.trim()) {
    out.push({ field: "prompt", msg: "Write a prompt first: it is empty (describe the sound to make)." });
  }
  const fields = state.models ? state.models.fields : {};
  for (const name of ["duration", "num_inference_steps", "guidance_scale", "seed"]) {
    if (bad.includes(name)) {
      out.push({ field: name, msg: "not a number" });
      continue;
    }
    const v = body[name];
    const b = fields[name];
    if (v === undefined || !b) continue;
    const lo = b.minimum;
    let hi = b.maximum;
    let more = "";
    const longform = name === "duration" && state.mode === "text" && longformMax();
    if (longform && longform > hi) {
      more = ` (up to ${fmt(longform)} s as long-form audio)`; // POST /jobs makes longer clips window by window
      hi = longform;
    }
    if (!Number.isFinite(v)) out.push({ field: name, msg: "not a number" });
    else if (INTEGERS.has(name) && !Number.isInteger(v)) out.push({ field: name, msg: "must be a whole number" });
    else if ((lo != null && v < lo) || (hi != null && v > hi)) {
      const model = state.models.name ? ` for model ${state.models.name}` : "";
      out.push({ field: name, msg: `must be between ${fmt(lo)} and ${fmt(b.maximum)}${model}${more}` });
    }
  }
  return out;
}

// The longest clip POST /jobs makes as a chain of windows (GET /models `capabilities.max_longform_s`), if any.
function longformMax() {
  const c = (state.models && state.models.capabilities) || {};
  return typeof c.max_longform_s === "number" ? c.max_longform_s : null;
}
