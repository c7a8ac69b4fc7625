// Recording a source from the microphone (MediaRecorder), up to what the service would take; the
// recording then goes through setSource like any file.

import { $, fmt } from "./util.js";
import { state } from "./state.js";
import { setSource, showSourceError } from "./source.js";

let recording = null; // the MediaRecorder while recording

function recordLimit() {
  const caps = state.caps;
  let limit = caps.maxDuration;
  if (caps.maxSeconds) limit = Math.min(limit, caps.maxSeconds);
  if (caps.maxBytes) limit = Math.min(limit, (caps.maxBytes - 44) / (state.models.sample_rate * 2 * 2));
  return Math.max(1, Math.floor(limit * 10) / 10);
}

async function toggleRecording() {
  if (recording) {
    recording.stop();
    return;
  }
  showSourceError("");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.MediaRecorder) {
    showSourceError("This browser cannot record here (recording needs https or localhost).");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    showSourceError(`No microphone: ${err.message || err.name}.`);
    return;
  }
  const recorder = new MediaRecorder(stream);
  const chunks = [];
  const limit = recordLimit();
  const started = performance.now();
  const button = $("record");
  recorder.ondataavailable = (e) => {
    if (e.data && e.data.size) chunks.push(e.data);
  };
  const timer = setInterval(() => {
    const s = (performance.now() - started) / 1000;
    $("record-status").textContent = `Recording ${s.toFixed(1)} s of at most ${fmt(limit)} s`;
    if (s >= limit && recorder.state === "recording") recorder.stop();
  }, 100);
  recorder.onstop = async () => {
    clearInterval(timer);
    for (const track of stream.getTracks()) track.stop();
    recording = null;
    button.textContent = "Record from the microphone";
    button.setAttribute("aria-pressed", "false");
    $("record-status").textContent = "";
    const blob = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
    const when = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    await setSource(blob, { name: `Recording ${when}`, origin: "recording", maxSeconds: limit });
  };
  recorder.start(250);
  recording = recorder;
  button.textContent = "Stop recording";
  button.setAttribute("aria-pressed", "true");
}

export function wireRecording() {
  $("record").addEventListener("click", toggleRecording);
}
