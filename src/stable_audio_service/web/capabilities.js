// What the service serves, from GET /models: the form's limits and defaults, the model line, and which
// modes, strength, upload limits and adapters this model offers (with notes on what it cannot do).

import { $, bytesText, fmt } from "./util.js";
import { state } from "./state.js";
import { api } from "./api.js";
import { showApiError, showError } from "./messages.js";
import { setMode, showStrength } from "./modes.js";
import { saved } from "./history.js";
import { loras } from "./loras.js";
import { applyLoudness } from "./loudness.js";
import { applyTakes } from "./takes.js";
import { applyLongform } from "./longform.js";

const MODES = ["text", "a2a", "inpaint"];

function applyModel(m) {
  state.models = m;
  const f = m.fields;
  for (const name of ["duration", "num_inference_steps", "guidance_scale"]) {
    const input = $(name);
    const b = f[name];
    input.min = b.minimum;
    input.max = b.maximum;
    if (input.value === "") input.value = b.default;
    const unit = name === "duration" ? " s" : "";
    $(`${name}-hint`).textContent = `${fmt(b.minimum)}–${fmt(b.maximum)}${unit}, default ${fmt(b.default)}`;
  }
  $("seed").min = f.seed.minimum;
  $("seed").max = f.seed.maximum;
  $("seed-hint").textContent = `${f.seed.minimum}–${f.seed.maximum}; empty: random.`;
  const select = $("format");
  const current = select.value;
  select.replaceChildren(
    ...f.format.choices.map((c) => {
      const o = document.createElement("option");
      o.value = c;
      o.textContent = c.toUpperCase();
      return o;
    }),
  );
  select.value = current && f.format.choices.includes(current) ? current : f.format.default;
  if (f.prompt && f.prompt.max_length) {
    $("prompt").maxLength = f.prompt.max_length;
    $("negative_prompt").maxLength = f.prompt.max_length;
  }
  const ch = m.channels === 2 ? "stereo" : m.channels === 1 ? "mono" : `${m.channels} channels`;
  $("model-line").textContent =
    `Model ${m.name} (${m.family}) on ${m.device}/${m.dtype} · ${m.sample_rate / 1000} kHz ${ch}`;
  applyCapabilities(m);
  applyLoudness();
  applyTakes();
  applyLongform(); // after the takes and loudness: it switches them off for a long-form duration
  $("generate").disabled = !!state.job;
  document.body.dataset.ready = "1";
}

// GET /models carries `capabilities`; services from before it have the same facts under `audio_inputs`.
function readCapabilities(m) {
  const c = m.capabilities || {};
  const a = m.audio_inputs || {};
  const pick = (key) => (c[key] !== undefined ? c[key] : a[key]);
  const inpainting = !!pick("inpainting");
  const uploads = pick("uploads") || null;
  return {
    audioToAudio: !!pick("audio_to_audio"),
    noise: pick("init_noise_level") || null,
    inpainting,
    continuation: c.continuation !== undefined ? !!c.continuation : inpainting,
    maxDuration: c.max_duration ?? m.max_duration ?? m.fields.duration.maximum,
    maxBytes: uploads && uploads.max_bytes ? uploads.max_bytes : null,
    maxSeconds: uploads && uploads.max_seconds ? uploads.max_seconds : null,
    maxBodyBytes: (uploads && uploads.max_body_bytes) || c.max_body_bytes || m.max_body_bytes || null,
    formats: uploads && uploads.formats ? uploads.formats : ["wav", "flac", "ogg", "mp3"],
  };
}

function modelLabel(m) {
  return m.family_title ? `${m.family_title} (family ${m.family})` : `this model (family ${m.family})`;
}

function applyCapabilities(m) {
  const caps = readCapabilities(m);
  state.caps = caps;
  const notes = [];
  $("mode-a2a-label").hidden = !caps.audioToAudio;
  $("mode-inpaint-label").hidden = !caps.inpainting && !caps.continuation;
  if (!caps.audioToAudio) {
    notes.push(`Audio to audio: not available, ${modelLabel(m)} does not take a source audio.`);
  } else if (!caps.noise) {
    notes.push(
      `Audio to audio on ${modelLabel(m)} barely changes the output: it adds the source's latents to ` +
        "full-strength noise (diffusers' initial_audio_waveforms), which the sampler all but erases, so the " +
        "result is practically the text-to-audio result of the same seed, and there is no strength to set. " +
        "Serve a Stable Audio 3 model for real audio-to-audio.",
    );
  }
  if (!caps.inpainting) {
    notes.push(
      `Inpainting and continuation: not available, ${modelLabel(m)} has no inpainting. ` +
        "Serve a Stable Audio 3 model to regenerate parts of a clip or extend it.",
    );
  }
  // The service's own notes on the model, where this page has no words of its own for it.
  if (!notes.length && Array.isArray(m.capabilities && m.capabilities.notes)) notes.push(...m.capabilities.notes);
  const noAdapters = m.capabilities && m.capabilities.loras_unavailable;
  if (noAdapters) notes.push(`LoRA adapters: not available, ${noAdapters}.`);
  $("mode-notes").replaceChildren(
    ...notes.map((t) => {
      const li = document.createElement("li");
      li.textContent = t;
      return li;
    }),
  );
  const strength = $("strength");
  if (caps.noise) {
    const lo = caps.noise.minimum ?? caps.noise.minimum_exclusive ?? 0;
    const step = Number(strength.step) || 0.01;
    strength.min = lo > 0 ? lo : step; // 0 would keep the source unchanged; the service wants > 0
    strength.max = caps.noise.maximum ?? 1;
    if (!strength.dataset.touched) strength.value = caps.noise.default ?? 0.6;
    showStrength();
  }
  const limits = [];
  if (caps.maxBytes) limits.push(`up to ${bytesText(caps.maxBytes)}`);
  if (caps.maxSeconds) limits.push(`${fmt(caps.maxSeconds)} s`);
  $("source-limits").textContent =
    `${caps.formats.map((f) => f.toUpperCase()).join(", ")}` +
    (limits.length ? `, ${limits.join(" and ")}. ` : ". ") +
    "Other formats the browser can read, and recordings, are converted to WAV here. " +
    `The model uses at most ${fmt(caps.maxDuration)} s of it.`;
  const editable = caps.audioToAudio || caps.inpainting || caps.continuation;
  $("use-result").hidden = !editable;
  // a mode the model cannot do falls back to text-to-audio
  const usable = { text: true, a2a: caps.audioToAudio, inpaint: caps.inpainting || caps.continuation };
  setMode(usable[state.mode] ? state.mode : "text");
  document.body.dataset.editModes = MODES.filter((k) => usable[k]).join(" ");
  saved.render(); // history items offer "Edit" only where the model can edit
  loras.apply(m);
}

let modelsTimer = null;
export async function loadModels() {
  clearTimeout(modelsTimer);
  try {
    applyModel(await api("models"));
    showError("");
  } catch (err) {
    if (err.status === 401 || err.status === 403) {
      $("model-line").textContent = "The service needs an API token.";
      showApiError(err, "Model info");
    } else {
      $("model-line").textContent = `Service not ready: ${err.message}. Retrying…`;
      modelsTimer = setTimeout(loadModels, 3000);
    }
  }
}
