// The result panel: the clip with its facts, download link and pictures, and the A/B switch that plays
// its source (before) or the result (after) on the same player at the same position.

import { $, fmt } from "./util.js";
import { state } from "./state.js";
import { channelsOf, decodeBlob, monoOf } from "./audio.js";
import { clearCanvas, drawSpectrogram, drawWaveform } from "./draw.js";
import { lorasText } from "./loras.js";
import { loudnessText } from "./loudness.js";
import { longformText } from "./longform.js";
import { markShownTake, renderTakes, takesText } from "./takes.js";

// What the result panel shows, kept for the A/B switch and for redraws.
const panel = {
  url: null, // the shown clip's object URL
  sourceUrl: null, // the shown entry's source (edits), for the A/B toggle
  decoded: null, // {channels, mono, sampleRate} of the shown clip
  decodedSource: null, // the same for the shown entry's source
  takeUrls: [], // the object URLs of the shown entry's takes (several takes: each has its own player)
  ab: "after",
};

function slug(text) {
  const s = text
    .normalize("NFKC")
    .toLowerCase()
    .replace(/[^\p{L}\p{N}]+/gu, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 60)
    .replace(/-+$/g, "");
  return s || "audio";
}

function filename(entry, seed = entry.seed) {
  return `${slug(entry.prompt)}-seed${seed}.${entry.format}`;
}

function fact(dl, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  dl.append(dt, dd);
}

function timingsText(t) {
  const parts = [];
  for (const [k, label] of [
    ["queue_s", "queue"],
    ["encode_s", "text"],
    ["denoise_s", "denoise"],
    ["decode_s", "decode"],
    ["audio_encode_s", "encode"],
    ["total_s", "total"],
  ]) {
    if (t && t[k] != null) parts.push(`${label} ${t[k].toFixed(2)} s`);
  }
  return parts.join(" · ") || "—";
}

export function editText(entry) {
  const e = entry.edit;
  if (!e) return "";
  if (e.mode === "a2a") {
    const level = e.init_noise_level != null ? `, strength ${fmt(e.init_noise_level)}` : "";
    return `Audio to audio${level}, from ${e.source.name}`;
  }
  const parts = [];
  if (e.regions && e.regions.length) {
    const spans = e.regions.map((r) => `${fmt(r.start_s)}–${fmt(r.end_s)} s`).join(", ");
    parts.push(`regenerated ${spans}`);
  }
  if (entry.duration > e.source.seconds + 1e-3) {
    parts.push(`continued from ${fmt(Number(e.source.seconds.toFixed(2)))} to ${fmt(entry.duration)} s`);
  }
  return `Inpainting (${parts.join("; ")}), from ${e.source.name}`;
}

export async function showResult(entry) {
  state.shown = entry;
  state.take = 0;
  panel.ab = "after";
  if (panel.url) URL.revokeObjectURL(panel.url);
  if (panel.sourceUrl) URL.revokeObjectURL(panel.sourceUrl);
  for (const url of panel.takeUrls) URL.revokeObjectURL(url);
  // several takes: a grid of them, each with its own player and download (one take: no grid, as it always was)
  const many = !!(entry.takes && entry.takes.length > 1);
  panel.takeUrls = renderTakes(many ? entry : {}, 0, (seed) => filename(entry, seed), (i) => pickTake(entry, i));
  panel.url = URL.createObjectURL(entry.blob);
  panel.sourceUrl = entry.edit ? URL.createObjectURL(entry.edit.source.blob) : null;
  panel.decodedSource = null;
  $("result-body").hidden = false;
  $("result-empty").hidden = true;
  $("result-prompt").textContent = entry.prompt;
  const player = $("player");
  player.src = panel.url;
  player.hidden = many && !entry.edit; // an edit's A/B plays the take shown, before or after
  $("download").hidden = many;
  $("ab").hidden = !entry.edit;
  setABButtons();
  const dl = $("result-facts");
  dl.replaceChildren();
  if (entry.edit) fact(dl, "Edit", editText(entry));
  if (many) fact(dl, "Seeds", `${entry.takes[0].seed}–${entry.takes.at(-1).seed} (${entry.takes.length} takes)`);
  else fact(dl, "Seed", String(entry.seed));
  fact(dl, "Duration", `${fmt(entry.duration)} s`);
  if (entry.longform) fact(dl, "Long-form", longformText(entry.longform));
  fact(dl, "Steps · guidance", `${entry.num_inference_steps} · ${fmt(entry.guidance_scale)}`);
  if (entry.loras && entry.loras.length) fact(dl, "LoRA", lorasText(entry.loras));
  if (entry.negative_prompt) fact(dl, "Negative prompt", entry.negative_prompt);
  fact(dl, "Audio", `${entry.format.toUpperCase()} · ${entry.sample_rate} Hz · ${entry.channels} ch`);
  if (entry.level) fact(dl, "Loudness", loudnessText(entry.level));
  fact(dl, "Timings", timingsText(entry.timings));
  const zones = entry.edit ? resultZones(entry) : [];
  const caption = $("waveform-caption");
  caption.hidden = !entry.edit;
  caption.textContent = !entry.edit
    ? ""
    : entry.edit.mode === "a2a"
      ? "The whole clip was redrawn from the source."
      : `Marked along the top: ${zones.map((z) => `${z.label} ${fmt(z.from)}–${fmt(z.to)} s`).join(", ")}; ` +
        "the rest is the source.";
  const a = $("download");
  a.href = panel.url;
  a.download = filename(entry);
  a.textContent = `Download ${a.download}`;
  await decodeShown(entry, entry.blob);
  if (entry.edit) {
    try {
      const audio = await decodeBlob(entry.edit.source.blob, entry.sample_rate);
      const channels = channelsOf(audio);
      if (state.shown === entry) panel.decodedSource = { channels, mono: monoOf(channels), sampleRate: audio.sampleRate };
    } catch {
      /* the source was read once already; without a picture the A/B still plays */
    }
  }
  drawResult();
}

// The result's pictures are of `blob` (the entry's clip, or one of its takes).
async function decodeShown(entry, blob) {
  for (const id of ["waveform", "spectrogram"]) delete $(id).dataset.drawn;
  try {
    const audio = await decodeBlob(blob, entry.sample_rate);
    const channels = channelsOf(audio);
    panel.decoded = { channels, mono: monoOf(channels), sampleRate: audio.sampleRate };
  } catch (err) {
    panel.decoded = null;
    for (const id of ["waveform", "spectrogram"]) clearCanvas($(id));
    $("spectrogram").setAttribute("aria-label", `No picture: this browser cannot decode ${entry.format}`);
  }
}

// A take's "Pictures": the waveform and spectrogram (and "Edit this clip") are of take i from now on.
async function pickTake(entry, i) {
  if (state.shown !== entry || !entry.takes[i]) return;
  state.take = i;
  markShownTake(i, entry.takes.length);
  if (entry.edit) {
    if (panel.url) URL.revokeObjectURL(panel.url);
    panel.url = URL.createObjectURL(entry.takes[i].blob);
    if (panel.ab === "after") $("player").src = panel.url;
  }
  await decodeShown(entry, entry.takes[i].blob);
  if (state.shown === entry && state.take === i) drawResult();
}

// A new result is announced (a polite live region: "Result ready: …") and, when its panel is not on screen (a
// phone's one column puts it below the form), scrolled to.
export function revealResult(entry) {
  const seconds = `${fmt(entry.duration)} s`;
  const seeds = entry.takes && entry.takes.length > 1 ? takesText(entry) : `seed ${entry.seed}`;
  $("result-status").textContent = `Result ready: “${entry.prompt}”, ${seconds}, ${seeds}.`;
  const box = $("result").getBoundingClientRect();
  const h = window.innerHeight || document.documentElement.clientHeight;
  if (box.top < 0 || box.top > h * 0.6) {
    const calm = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    $("result").scrollIntoView({ behavior: calm ? "auto" : "smooth", block: "start" });
  }
}

function setABButtons() {
  $("ab-after").setAttribute("aria-pressed", String(panel.ab === "after"));
  $("ab-before").setAttribute("aria-pressed", String(panel.ab === "before"));
  document.body.dataset.ab = panel.ab;
}

// A/B: the same player switches between the result and its source, at the same position, still playing
// if it was.
function setAB(which) {
  if (!state.shown || !state.shown.edit) return;
  panel.ab = which;
  setABButtons();
  const player = $("player");
  const url = which === "before" ? panel.sourceUrl : panel.url;
  if (player.src !== url) {
    const at = player.currentTime || 0;
    const playing = !player.paused && !player.ended;
    player.src = url;
    player.addEventListener(
      "loadedmetadata",
      () => {
        player.currentTime = Math.min(at, player.duration || at);
        if (playing) player.play().catch(() => {});
      },
      { once: true },
    );
  }
  const label = which === "before" ? "the source (before)" : "the result (after)";
  player.setAttribute("aria-label", `Playing ${label}`);
  drawResult();
}

// The result panel shows the clip (After) or its source (Before), with what was regenerated marked.
export function drawResult() {
  const before = panel.ab === "before" && panel.decodedSource;
  const decoded = before ? panel.decodedSource : panel.decoded;
  if (!decoded) return;
  const entry = state.shown;
  const zones = entry && entry.edit ? resultZones(entry) : [];
  const own = decoded.channels[0].length / decoded.sampleRate;
  const view = entry && entry.edit ? Math.max(own, entry.duration) : own;
  drawWaveform($("waveform"), decoded, { view, zones });
  drawSpectrogram($("spectrogram"), decoded, { view }); // the same timeline as the waveform
}

function resultZones(entry) {
  const e = entry.edit;
  const zones = [];
  if (e.mode !== "inpaint") return zones;
  for (const r of e.regions || []) {
    const to = Math.min(r.end_s, entry.duration);
    if (r.start_s < to) zones.push({ from: r.start_s, to, kind: "mark", label: "regenerated" });
  }
  if (e.source && entry.duration > e.source.seconds + 1e-3) {
    zones.push({ from: e.source.seconds, to: entry.duration, kind: "mark", label: "new (continuation)" });
  }
  return zones;
}

export function wirePlayer() {
  $("ab-after").addEventListener("click", () => setAB("after"));
  $("ab-before").addEventListener("click", () => setAB("before"));
}
