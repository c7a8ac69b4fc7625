// The generation form's plain fields: their names, reading them into a request body, and a random seed
// within the service's bounds. The editing fields (source, strength, regions) live with the editing modules.

import { $ } from "./util.js";
import { state } from "./state.js";
import { loras } from "./loras.js";
import { loudnessBody } from "./loudness.js";
import { takesBody } from "./takes.js";
import { longformBody } from "./longform.js";

const NUMERIC = ["duration", "num_inference_steps", "guidance_scale", "seed"];
export const FIELDS = [
  "prompt",
  "negative_prompt",
  ...NUMERIC,
  "num_outputs",
  "format",
  "loudness",
  "window_s",
  "overlap_s",
];

export function randomSeed() {
  const max = state.models ? state.models.fields.seed.maximum : 2 ** 32 - 1;
  const min = state.models ? state.models.fields.seed.minimum : 0;
  const u = new Uint32Array(1);
  crypto.getRandomValues(u);
  return min + (u[0] % (max - min + 1));
}

export function readForm() {
  const body = { prompt: $("prompt").value };
  const neg = $("negative_prompt").value;
  if (neg.trim()) body.negative_prompt = neg;
  const bad = [];
  for (const name of NUMERIC) {
    const input = $(name);
    if (input.validity.badInput) {
      bad.push(name);
      continue;
    }
    if (input.value.trim() === "") continue; // the service's default (or a random seed)
    body[name] = Number(input.value);
  }
  const takes = takesBody();
  if (takes !== undefined) body.num_outputs = takes;
  longformBody(body); // window_s / overlap_s, where the request is long-form and they were filled in
  body.format = $("format").value;
  const level = loudnessBody();
  if (level !== undefined) body.loudness = level;
  const adapters = loras.body();
  if (adapters) body.loras = adapters;
  return { body, bad };
}
