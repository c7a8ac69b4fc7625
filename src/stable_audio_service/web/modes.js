// The three modes (text to audio, audio to audio, inpaint & continue): switching between them shows their
// controls and keeps each mode's duration; and the strength slider of audio to audio.

import { $ } from "./util.js";
import { state } from "./state.js";
import { durationHint, sourceDuration } from "./duration.js";
import { drawSource } from "./regions.js";

let textDuration = null; // the duration typed for text-to-audio, restored when coming back to it

export function setMode(mode) {
  const previous = state.mode;
  state.mode = mode;
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.checked = radio.value === mode;
  const editing = mode !== "text";
  $("source").hidden = !editing;
  $("strength-box").hidden = mode !== "a2a" || !(state.caps && state.caps.noise);
  $("regions-box").hidden = mode !== "inpaint";
  $("region-layer").classList.toggle("editable", mode === "inpaint");
  document.body.dataset.mode = mode;
  if (previous === "text" && editing) textDuration = $("duration").value;
  if (editing && previous !== mode) sourceDuration();
  if (!editing && previous !== "text" && textDuration !== null) $("duration").value = textDuration;
  durationHint();
  drawSource();
}

export function showStrength() {
  const v = Number($("strength").value);
  const words =
    v >= 0.999
      ? "ignores the source"
      : v >= 0.75
        ? "keeps little of the source"
        : v >= 0.4
          ? "a variation of the source"
          : "stays close to the source";
  $("strength-value").textContent = `${v.toFixed(2)}: ${words}`;
}

export function wireModes() {
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => radio.checked && setMode(radio.value));
  }
  $("strength").addEventListener("input", () => {
    $("strength").dataset.touched = "1";
    showStrength();
  });
  $("duration").addEventListener("input", () => {
    if (state.mode === "text") return;
    durationHint();
    drawSource({ spectrogram: false }); // only the timeline changed
  });
}
