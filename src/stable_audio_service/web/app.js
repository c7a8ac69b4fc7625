// Stable Audio playground: plain JavaScript modules, no build step, no third-party code.
// Talks to the service it was served from (relative URLs), so it also works under a path prefix.
// This module is the page's entry point (index.html loads only it): it wires the form's own controls,
// has each module wire its part, and asks the service what it serves.

import { $ } from "./util.js";
import { restoreToken, wireToken } from "./token.js";
import { randomSeed } from "./form.js";
import { loadModels } from "./capabilities.js";
import { loras } from "./loras.js";
import { cancel, generate } from "./job.js";
import { drawResult, wirePlayer } from "./player.js";
import { drawSource, wireRegions } from "./regions.js";
import { wireModes } from "./modes.js";
import { wireSource } from "./source.js";
import { wireRecording } from "./record.js";
import { saved } from "./history.js";
import { wireLoudness } from "./loudness.js";
import { wireLongform } from "./longform.js";

// Canvases are drawn at their displayed size: a resize redraws both panels' pictures.
function drawAll() {
  drawResult();
  drawSource();
}

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(drawAll, 150);
});

function init() {
  restoreToken();
  $("gen-form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancel);
  $("dice").addEventListener("click", () => {
    $("seed").value = randomSeed();
    $("seed").focus();
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      $("gen-form").requestSubmit();
    }
  });
  wireToken(loadModels);
  $("history-clear").addEventListener("click", () => saved.clear());
  $("lora-add").addEventListener("click", () => loras.add());
  wireModes();
  wireSource();
  wireRecording();
  wireRegions();
  wirePlayer();
  wireLoudness();
  wireLongform();
  saved.render();
  loadModels();
}

init();
