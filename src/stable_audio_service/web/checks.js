// The form's checks before anything is sent: a prompt that is not blank, and every number within the loaded
// model's bounds from GET /models (`fields`), worded as the service words its own refusal: long-form durations in
// text to audio only, the takes, the long-form windows. No DOM changes (but opening the windows' box when they
// are wrong): the caller shows what comes back (messages.showProblems).

import { fmt } from "./util.js";
import { state } from "./state.js";
import { checkLongform, longformFields } from "./longform.js";
import { checkTakes } from "./takes.js";

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
    const longform = name === "duration" ? longformMax() : null;
    if (longform && longform > hi && state.mode === "text") {
      more = ` (up to ${fmt(longform)} s as long-form audio)`; // POST /jobs makes longer clips window by window
      hi = longform;
    } else if (longform && longform > hi) {
      // long-form audio continues itself from text: it takes no source (init_audio_b64 / inpaint_audio_b64)
      more = ` (long-form audio, up to ${fmt(longform)} s, is made from text only: it takes no source)`;
    }
    if (!Number.isFinite(v)) out.push({ field: name, msg: "not a number" });
    else if (INTEGERS.has(name) && !Number.isInteger(v)) out.push({ field: name, msg: "must be a whole number" });
    else if ((lo != null && v < lo) || (hi != null && v > hi)) {
      const model = state.models.name ? ` for model ${state.models.name}` : "";
      out.push({ field: name, msg: `must be between ${fmt(lo)} and ${fmt(b.maximum)}${model}${more}` });
    }
  }
  // long-form's windows, and the takes (several only where the request is not long-form: takes.js's control is
  // switched off there, and nothing is sent for it)
  out.push(...checkTakes(body), ...checkLongform(body));
  return out;
}

// The longest clip POST /jobs makes as a chain of windows (GET /models `fields.longform.max_duration`, or
// `capabilities.max_longform_s`), if any.
function longformMax() {
  const lf = longformFields();
  return lf ? lf.max_duration : null;
}
