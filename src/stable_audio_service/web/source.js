// The source audio of an edit: taking a file, a drop, a recording or a result; checking it against the
// service's limits before anything is sent; and the exact bytes (base64) that go in the request.

import { $, bytesText, fmt } from "./util.js";
import { state } from "./state.js";
import { channelsOf, decodeBlob, encodeWav, monoOf, sniffFormat } from "./audio.js";
import { durationHint, sourceDuration } from "./duration.js";
import { drawSource, renderRegions } from "./regions.js";
import { setMode } from "./modes.js";

let sourceUrl = null; // the source player's object URL
let sourceSeq = 0; // the latest source asked for: an older one still being read is dropped

export function showSourceError(message) {
  const box = $("source-error");
  box.textContent = message;
  box.hidden = !message;
}

function tooLarge(name, bytes, what) {
  return (
    `${name}${what} is ${bytesText(bytes)}; the service takes sources up to ${bytesText(state.caps.maxBytes)}. ` +
    "Use a shorter clip, or FLAC, OGG or MP3, which are smaller."
  );
}

// Every source (file, recording, result) comes through here: checked against the service's limits
// before anything is sent, decoded once for the pictures, and kept as the exact bytes to send.
export async function setSource(blob, { name, origin = "file", maxSeconds = null } = {}) {
  if (!state.models) return false;
  const seq = ++sourceSeq;
  const caps = state.caps;
  showSourceError("");
  $("source-facts").textContent = `Reading ${name}…`;
  const fail = (message) => {
    if (seq !== sourceSeq) return false;
    clearSource();
    showSourceError(message);
    return false;
  };
  // The byte limit first: a file past it is refused without being read.
  if (caps.maxBytes && blob.size > caps.maxBytes && origin !== "recording") return fail(tooLarge(name, blob.size, ""));
  let format = await sniffFormat(blob);
  if (format && !caps.formats.includes(format)) format = null;
  let audio;
  try {
    audio = await decodeBlob(blob, state.models.sample_rate);
  } catch (err) {
    if (format) {
      return fail(`${name}: this browser cannot read this ${format.toUpperCase()} file (${err.message || err}).`);
    }
    return fail(`${name} is not an audio file this page can read (wav, flac, ogg, mp3, or what the browser plays).`);
  }
  if (seq !== sourceSeq) return false;
  let channels = channelsOf(audio);
  let note = "";
  let frames = audio.length;
  if (maxSeconds && frames > Math.floor(maxSeconds * audio.sampleRate)) {
    frames = Math.floor(maxSeconds * audio.sampleRate);
    channels = channels.map((c) => c.subarray(0, frames));
    note = `trimmed to ${fmt(maxSeconds)} s; `;
  }
  if (!frames) return fail(`${name} holds no audio.`);
  const seconds = frames / audio.sampleRate;
  if (caps.maxSeconds && seconds > caps.maxSeconds) {
    return fail(`${name} is ${seconds.toFixed(2)} s long; the service takes sources up to ${fmt(caps.maxSeconds)} s.`);
  }
  let sendBlob = blob;
  if (!format || note) {
    // The service reads wav, flac, ogg and mp3: anything else the browser decoded goes as 16-bit WAV.
    sendBlob = encodeWav(channels, audio.sampleRate, frames);
    note += `converted to 16-bit WAV in the browser (${origin === "recording" ? "recorded" : "read"} as ${blob.type || "an unknown type"})`;
    format = "wav";
    if (caps.maxBytes && sendBlob.size > caps.maxBytes) return fail(tooLarge(name, sendBlob.size, " as WAV"));
  }
  state.source = {
    blob: sendBlob,
    name,
    origin,
    format,
    bytes: sendBlob.size,
    seconds,
    note,
    decoded: { channels, mono: monoOf(channels), sampleRate: audio.sampleRate },
    b64: null,
  };
  state.regions = [];
  if (sourceUrl) URL.revokeObjectURL(sourceUrl);
  sourceUrl = URL.createObjectURL(sendBlob);
  $("source-player").src = sourceUrl;
  $("source-body").hidden = false;
  $("source-facts").textContent =
    `${name} · ${format.toUpperCase()} · ${seconds.toFixed(2)} s · ${audio.numberOfChannels} ch · ` +
    `${bytesText(sendBlob.size)}${note ? ` · ${note}` : ""}`;
  if (state.mode !== "text") sourceDuration();
  durationHint();
  renderRegions();
  drawSource();
  document.body.dataset.source = String(seq);
  return true;
}

function clearSource() {
  state.source = null;
  state.regions = [];
  if (sourceUrl) URL.revokeObjectURL(sourceUrl);
  sourceUrl = null;
  $("source-player").removeAttribute("src");
  $("source-body").hidden = true;
  $("source-facts").textContent = "";
  renderRegions();
  durationHint();
}

// The file's bytes as base64, read once per source (FileReader encodes natively; no JS copy loop)
// and reused by every request made from it.
export function sourceBase64(source) {
  if (!source.b64) {
    source.b64 = new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => {
        const url = reader.result;
        resolve(url.slice(url.indexOf(",") + 1));
      };
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(source.blob);
    });
  }
  return source.b64;
}

// The request body with the base64 spliced in as the last field: the big string is not run through
// JSON.stringify (base64 needs no escaping).
export function bodyWithAudio(body, field, b64) {
  const head = JSON.stringify(body);
  return `${head.slice(0, -1)}${head.length > 2 ? "," : ""}"${field}":"` + b64 + '"}';
}

function pickFile(file) {
  if (!file) return;
  if (state.mode === "text") setMode(state.caps.audioToAudio ? "a2a" : "inpaint");
  setSource(file, { name: file.name || "dropped audio", origin: "file" });
}

export function useAsSource(entry, take = 0) {
  if (state.mode === "text") setMode(state.caps.audioToAudio ? "a2a" : "inpaint");
  const clip = entry.takes && entry.takes[take] ? entry.takes[take] : entry; // one take of several
  const name = `“${entry.prompt}” (seed ${clip.seed})`;
  setSource(clip.blob, { name, origin: "result" }).then((ok) => {
    if (ok) $("source").scrollIntoView({ behavior: "smooth", block: "start" });
  });
}

// The file picker, the drop zone, and a file dropped anywhere on the page.
export function wireSource() {
  $("source-file").addEventListener("change", (e) => {
    pickFile(e.target.files[0]);
    e.target.value = ""; // the same file again is a new pick
  });
  const zone = $("source");
  zone.addEventListener("dragover", (e) => {
    if (!e.dataTransfer || ![...e.dataTransfer.types].includes("Files")) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
    $("dropzone").classList.add("over");
  });
  zone.addEventListener("dragleave", (e) => {
    if (!zone.contains(e.relatedTarget)) $("dropzone").classList.remove("over");
  });
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    e.stopPropagation();
    $("dropzone").classList.remove("over");
    if (e.dataTransfer && e.dataTransfer.files.length) pickFile(e.dataTransfer.files[0]);
  });
  // A file dropped anywhere else must not replace the page (and lose the work): it becomes the source.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    const editable = state.caps && (state.caps.audioToAudio || state.caps.inpainting);
    if (editable && e.dataTransfer && e.dataTransfer.files.length) pickFile(e.dataTransfer.files[0]);
  });
  $("use-result").addEventListener("click", () => state.shown && useAsSource(state.shown, state.take));
}
