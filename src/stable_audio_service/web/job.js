// One generation, start to end: checking and sending the request (POST /jobs), following its progress
// over the event stream (or by polling), cancelling it, and fetching the result into the player and history.

import { $, bytesText, fmt } from "./util.js";
import { state } from "./state.js";
import { api, apiBytes, streamEvents } from "./api.js";
import { clearFieldErrors, showApiError, showError, showProblems } from "./messages.js";
import { readForm } from "./form.js";
import { checkForm } from "./checks.js";
import { checkLoudness } from "./loudness.js";
import { longformPlan, updateLongform, windowText } from "./longform.js";
import { loras } from "./loras.js";
import { bodyWithAudio, sourceBase64 } from "./source.js";
import { showRegionsError } from "./regions.js";
import { revealResult, showResult } from "./player.js";
import { saved } from "./history.js";

const MIME = { wav: "audio/wav", flac: "audio/flac", ogg: "audio/ogg", mp3: "audio/mpeg" };

function setBusy(busy) {
  $("generate").disabled = busy || !state.models;
  $("cancel").hidden = !busy;
  $("cancel").disabled = false;
  $("gen-form").setAttribute("aria-busy", busy ? "true" : "false");
}

// The service's estimate of the seconds left (`eta_s` of POST /jobs, the job view and its events), as words; ""
// when there is none (the service has not measured its speed yet).
export function etaText(eta) {
  if (typeof eta !== "number" || !Number.isFinite(eta)) return "";
  if (eta < 1) return "about to finish";
  if (eta < 90) return `about ${Math.round(eta)} s`;
  return `about ${Math.round(eta / 60)} min`;
}

function queuedText(position, eta) {
  const parts = ["Queued"];
  if (position) parts.push(`position ${position}`);
  const when = etaText(eta);
  if (when) parts.push(when);
  return parts.join(" · ");
}

function setProgress(text, step, total) {
  $("progress-box").hidden = false;
  const bar = $("progress");
  if (total) {
    bar.max = total;
    bar.value = step;
  } else {
    bar.removeAttribute("value"); // indeterminate while queued
  }
  const elapsed = state.job ? ` · ${((performance.now() - state.job.started) / 1000).toFixed(1)} s` : "";
  $("progress-text").textContent = text + elapsed;
}

export async function generate(ev) {
  ev.preventDefault();
  if (state.job || !state.models) return;
  clearFieldErrors();
  showError("");
  updateLongform(); // what long-form audio switches off is off before the form is read
  const { body, bad } = readForm();
  const plan = longformPlan();
  // checked here first (the prompt, GET /models' ranges, the adapters' controls): nothing is sent until it is right
  const problems = [...checkForm(body, bad), ...checkLoudness(body)];
  const adapterProblems = loras.check();
  if (problems.length || adapterProblems.length) {
    showProblems(problems, adapterProblems);
    return;
  }
  const edit = state.mode === "text" ? null : checkEdit(body);
  if (edit === false) return; // the reason is shown; nothing was sent
  const job = { id: null, abort: new AbortController(), started: performance.now(), cancelling: false };
  // long-form: one window's steps, so that the steps counted over every window also say which window runs
  job.perWindow = plan ? (body.num_inference_steps ?? state.models.fields.num_inference_steps.default) : null;
  state.job = job;
  setBusy(true);
  let raw;
  if (edit) {
    setProgress("Reading the source…");
    try {
      raw = bodyWithAudio(body, edit.field, await sourceBase64(edit.source));
    } catch (err) {
      finish();
      $("progress-box").hidden = true;
      showError(`Could not read the source: ${err.message || err}`);
      return;
    }
    if (state.caps.maxBodyBytes && raw.length > state.caps.maxBodyBytes) {
      finish();
      $("progress-box").hidden = true;
      showError(
        `The request would be ${bytesText(raw.length)}, over the service's ${bytesText(state.caps.maxBodyBytes)} ` +
          "body limit (base64 adds a third to the file). Use a shorter or compressed source.",
      );
      return;
    }
  }
  setProgress("Submitting…");
  let accepted;
  try {
    accepted = await api("jobs", edit ? { method: "POST", raw } : { method: "POST", body });
  } catch (err) {
    state.job = null;
    setBusy(false);
    $("progress-box").hidden = true;
    showApiError(err, "Could not start");
    return;
  }
  job.id = accepted.id;
  document.body.dataset.jobId = job.id;
  setProgress(accepted.position ? queuedText(accepted.position, accepted.eta_s) : "Starting…");
  let last = null;
  try {
    last = await streamEvents(job.id, job.abort.signal, (e) => onEvent(e));
  } catch (err) {
    if (err.name !== "AbortError" && err.status) {
      finish();
      showApiError(err, "Progress");
      return;
    }
  }
  if (!last) last = await pollUntilEnd(job); // the stream broke: ask instead
  await onTerminal(job, last, body, edit, plan);
}

// Checks an editing request before anything is sent and adds its fields to `body`. Returns what the
// request edits (kept with the result for the before/after), or false after showing why it cannot go.
function checkEdit(body) {
  const source = state.source;
  const refuse = (message, focus) => {
    showError(message);
    if (focus) focus.focus();
    return false;
  };
  if (!source) {
    const why = $("source-error").hidden ? "" : ` ${$("source-error").textContent}`;
    return refuse(`Choose a source first: drop or pick a file, record, or edit a result.${why}`, $("source-file"));
  }
  const duration = body.duration ?? state.models.fields.duration.default;
  const kept = { blob: source.blob, name: source.name, format: source.format, seconds: source.seconds };
  if (state.mode === "a2a") {
    if (state.caps.noise) body.init_noise_level = Number($("strength").value);
    return { mode: "a2a", field: "init_audio_b64", source, kept, init_noise_level: body.init_noise_level ?? null };
  }
  const regions = state.regions.map((r) => ({ start_s: r.start, end_s: r.end }));
  for (const [i, r] of regions.entries()) {
    if (r.start_s >= duration) {
      showRegionsError(`Region ${i + 1} starts at or after the end of the output (${fmt(duration)} s).`);
      return refuse(`Region ${i + 1} starts after the output ends (${fmt(duration)} s): move it or lengthen Duration.`);
    }
  }
  const continues = state.caps.continuation && duration > source.seconds + 1e-3;
  if (!regions.length && !continues) {
    const more = state.caps.continuation
      ? `, or set Duration longer than the source (${source.seconds.toFixed(2)} s) to continue it.`
      : ".";
    return refuse(`Nothing to regenerate: drag across the source's waveform to mark a region${more}`, $("region-add"));
  }
  if (regions.length) body.inpaint_regions = regions;
  return { mode: "inpaint", field: "inpaint_audio_b64", source, kept, regions };
}

function onEvent(e) {
  if (e.type === "queued") {
    setProgress(queuedText(e.position, e.eta_s));
  } else if (e.type === "step" && !e.total) {
    setProgress("Starting…"); // picked up by the worker; the step count is not known yet
  } else if (e.type === "step") {
    const left = etaText(e.eta_s);
    const win = state.job ? windowText(e.step, e.total, state.job.perWindow) : "";
    setProgress(`Step ${e.step} of ${e.total}${win ? ` · ${win}` : ""}${left ? ` · ${left}` : ""}`, e.step, e.total);
  }
}

async function pollUntilEnd(job) {
  for (;;) {
    try {
      const view = await api(`jobs/${encodeURIComponent(job.id)}`);
      if (view.status === "done") return { type: "done", timings: view.timings };
      if (view.status === "failed") return { type: "failed", error: view.error };
      if (view.status === "cancelled") return { type: "cancelled" };
      if (view.status === "queued") onEvent({ type: "queued", position: view.position, eta_s: view.eta_s });
      else onEvent({ type: "step", step: view.step, total: view.total_steps, eta_s: view.eta_s });
    } catch (err) {
      if (err.status && err.status !== 503) return { type: "failed", error: err.message, status: err.status };
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function finish() {
  state.job = null;
  setBusy(false);
}

async function onTerminal(job, last, body, edit, plan) {
  if (last.type === "cancelled") {
    finish();
    setProgress("Cancelled.");
    return;
  }
  if (last.type === "failed") {
    finish();
    $("progress-box").hidden = true;
    const retry = last.retry_after_s ? ` Retry in about ${Math.ceil(last.retry_after_s)} s.` : "";
    showError(`Generation failed${last.status ? ` (${last.status})` : ""}: ${last.error || "unknown error"}${retry}`);
    return;
  }
  let view;
  try {
    view = await api(`jobs/${encodeURIComponent(job.id)}`);
  } catch (err) {
    finish();
    showApiError(err, "Could not fetch the result");
    return;
  }
  finish();
  const r = view.result;
  const total = view.total_steps || body.num_inference_steps;
  setProgress(`Done in ${r.timings && r.timings.total_s != null ? r.timings.total_s.toFixed(2) : "?"} s`, total, total);
  const type = MIME[r.format] || "application/octet-stream";
  // one file, or each take's (`outputs`: /jobs/{id}/audio?index=i with its seed)
  const many = Array.isArray(r.outputs) && r.outputs.length > 1 ? r.outputs : null;
  let takes;
  try {
    const fetchTake = async (t) => {
      const blob = new Blob([await apiBytes(t.audio_url.replace(/^\//, ""))], { type });
      return { seed: t.seed, url: t.audio_url, blob };
    };
    takes = await Promise.all((many || [{ seed: r.seed, audio_url: r.audio_url }]).map(fetchTake));
  } catch (err) {
    showApiError(err, "Could not fetch the audio");
    return;
  }
  const entry = {
    id: view.id,
    created: Date.now(),
    prompt: body.prompt,
    negative_prompt: body.negative_prompt || "",
    duration: r.duration,
    num_inference_steps: plan ? job.perWindow : total, // a long-form job's total counts every window's steps
    guidance_scale: body.guidance_scale ?? state.models.fields.guidance_scale.default,
    seed: r.seed,
    format: r.format,
    sample_rate: r.sample_rate,
    channels: r.channels,
    timings: r.timings || {},
    blob: takes[0].blob,
    num_outputs: takes.length,
    takes: many ? takes : null, // [{seed, url, blob}] in seed order, with several takes
    // long-form: the windows as asked (empty: the service's defaults) and as made
    window_s: body.window_s ?? null,
    overlap_s: body.overlap_s ?? null,
    longform: plan ? { windows: plan.count, window_s: plan.window, overlap_s: plan.overlap } : null,
    // the adapters as requested, with every control (meta.loras confirms the names and strengths applied)
    loras: appliedLoras(body.loras, view.meta && view.meta.loras),
    loudness: body.loudness ?? null, // as asked; `level` is what the service did (meta.loudness)
    level: (view.meta && view.meta.loudness) || null,
    edit: edit
      ? {
          mode: edit.mode,
          source: edit.kept,
          init_noise_level: edit.init_noise_level ?? null,
          regions: edit.regions || [],
        }
      : null,
  };
  await showResult(entry);
  revealResult(entry);
  await saved.add(entry);
}

// The request's `loras` items, kept where the answer's meta.loras applied the same adapter (by order and name),
// with the strength the service says it used.
function appliedLoras(sent, applied) {
  if (!Array.isArray(sent) || !sent.length) return [];
  if (!Array.isArray(applied)) return sent.map((l) => ({ ...l }));
  return sent
    .map((l, i) => (applied[i] && applied[i].name === l.name ? { ...l, strength: applied[i].strength } : null))
    .filter((l) => l);
}

export async function cancel() {
  const job = state.job;
  if (!job || !job.id || job.cancelling) return;
  job.cancelling = true;
  $("cancel").disabled = true;
  setProgress("Cancelling…");
  try {
    await api(`jobs/${encodeURIComponent(job.id)}`, { method: "DELETE" });
  } catch (err) {
    job.cancelling = false;
    $("cancel").disabled = false;
    showApiError(err, "Could not cancel");
  }
  // The event stream reports `cancelled` and ends the job in the page.
}
