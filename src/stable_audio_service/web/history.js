// History: the last generations kept in this browser (IndexedDB), listed with a player and buttons to
// show one again, put its settings back into the form (with its source, for an edit), edit it, delete it.

import { $, fmt } from "./util.js";
import { state } from "./state.js";
import { durationHint } from "./duration.js";
import { setMode, showStrength } from "./modes.js";
import { drawSource, renderRegions } from "./regions.js";
import { setSource, useAsSource } from "./source.js";
import { editText, showResult } from "./player.js";
import { loras, lorasText } from "./loras.js";
import { restoreLoudness } from "./loudness.js";
import { restoreTakes, takesText } from "./takes.js";
import { longformText, restoreLongform } from "./longform.js";
import { clearFieldErrors } from "./messages.js";

const HISTORY_MAX = 8;
const urls = new Map(); // entry id -> object URL of its audio, kept while the entry is listed

export const saved = (() => {
  const DB = "stable-audio-playground";
  const STORE = "generations";
  let dbPromise = null;

  function open() {
    if (!dbPromise) {
      dbPromise = new Promise((resolve, reject) => {
        if (!window.indexedDB) return reject(new Error("no IndexedDB"));
        const req = indexedDB.open(DB, 1);
        req.onupgradeneeded = () => req.result.createObjectStore(STORE, { keyPath: "id" });
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
      });
    }
    return dbPromise;
  }

  function tx(mode, fn) {
    return open().then(
      (db) =>
        new Promise((resolve, reject) => {
          const t = db.transaction(STORE, mode);
          const result = fn(t.objectStore(STORE));
          t.oncomplete = () => resolve(result && "result" in result ? result.result : undefined);
          t.onerror = () => reject(t.error);
          t.onabort = () => reject(t.error);
        }),
    );
  }

  async function list() {
    const all = (await tx("readonly", (s) => s.getAll())) || [];
    return all.sort((a, b) => b.created - a.created);
  }

  async function add(entry) {
    try {
      await tx("readwrite", (s) => s.put(entry));
      const all = await list();
      const old = all.slice(HISTORY_MAX);
      if (old.length) await tx("readwrite", (s) => old.forEach((e) => s.delete(e.id)));
    } catch (err) {
      $("history-empty").textContent = `History is not available here (${err.message}).`;
    }
    await render();
  }

  async function remove(id) {
    await tx("readwrite", (s) => s.delete(id));
    await render();
  }

  async function clear() {
    await tx("readwrite", (s) => s.clear());
    await render();
  }

  async function render() {
    let items = [];
    try {
      items = await list();
    } catch (err) {
      $("history-empty").textContent = `History is not available here (${err.message}).`;
      return;
    }
    // A re-render keeps the object URLs of entries still listed: revoking one an <audio> is still
    // loading from would fail that load. Only URLs of entries gone are revoked.
    const keep = new Set(items.map((e) => e.id));
    for (const [id, url] of urls) {
      if (!keep.has(id)) {
        URL.revokeObjectURL(url);
        urls.delete(id);
      }
    }
    const ol = $("history");
    ol.replaceChildren(...items.map(item));
    $("history-empty").hidden = items.length > 0;
    $("history-clear").hidden = items.length === 0;
  }

  // A button whose accessible name is its visible text followed by which entry it acts on (hidden words),
  // so that "Reuse settings" is also what a voice or screen-reader user says and hears first.
  function button(text, more, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "secondary small";
    const which = document.createElement("span");
    which.className = "visually-hidden";
    which.textContent = ` ${more}`;
    b.append(text, which);
    b.addEventListener("click", onClick);
    return b;
  }

  function item(e) {
    const li = document.createElement("li");
    const title = document.createElement("p");
    title.className = "h-prompt";
    title.textContent = e.prompt;
    const meta = document.createElement("p");
    meta.className = "hint";
    const when = new Date(e.created).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    meta.textContent =
      (e.edit ? `${editText(e)} · ` : "") +
      `${fmt(e.duration)} s · ${e.num_inference_steps} steps · guidance ${fmt(e.guidance_scale)} · ` +
      (e.takes && e.takes.length > 1 ? takesText(e) : `seed ${e.seed}`) +
      ` · ${e.format}` +
      (e.longform ? ` · long-form, ${longformText(e.longform)}` : "") +
      (e.loras && e.loras.length ? ` · LoRA ${lorasText(e.loras)}` : "") +
      ` · ${when}`;
    const url = urls.get(e.id) || URL.createObjectURL(e.blob);
    urls.set(e.id, url);
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "metadata";
    audio.src = url;
    audio.setAttribute("aria-label", `Play: ${e.prompt}`);
    const actions = document.createElement("div");
    actions.className = "row wrap";
    actions.append(
      button("Show", `“${e.prompt}” with its pictures`, async () => {
        await showResult(e);
        $("result").scrollIntoView({ behavior: "smooth", block: "start" });
        $("player").focus();
      }),
      button("Reuse settings", `of “${e.prompt}” in the form`, () => reuse(e)),
    );
    if (!$("use-result").hidden) {
      actions.append(button("Edit", `“${e.prompt}” as the source`, () => useAsSource(e)));
    }
    actions.append(button("Delete", `“${e.prompt}” from history`, () => remove(e.id)));
    li.append(title, meta, audio, actions);
    return li;
  }

  return { add, render, clear };
})();

// Every setting of the entry back into the form: the fields, the takes, the adapters with their controls, the
// loudness, a long-form clip's windows, and for an edit its mode, source, strength and regions.
function reuse(e) {
  clearFieldErrors();
  $("prompt").value = e.prompt;
  $("negative_prompt").value = e.negative_prompt || "";
  $("duration").value = e.duration;
  $("num_inference_steps").value = e.num_inference_steps;
  $("guidance_scale").value = e.guidance_scale;
  $("seed").value = e.seed;
  $("format").value = e.format;
  loras.restore(e.loras || []);
  restoreLoudness(e.loudness ?? null);
  restoreTakes(e.num_outputs || 1);
  if (e.edit && state.caps && (e.edit.mode === "a2a" ? state.caps.audioToAudio : state.caps.inpainting)) {
    // an edit comes back with its source, strength and regions
    setMode(e.edit.mode);
    if (e.edit.init_noise_level != null) {
      $("strength").value = e.edit.init_noise_level;
      showStrength();
    }
    const regions = (e.edit.regions || []).map((r) => ({ start: r.start_s, end: r.end_s }));
    setSource(e.edit.source.blob, { name: e.edit.source.name, origin: "history" }).then((ok) => {
      if (!ok) return;
      state.regions = regions;
      $("duration").value = e.duration;
      durationHint();
      renderRegions();
      drawSource();
    });
  } else if (state.mode !== "text" && !e.edit) {
    setMode("text");
    $("duration").value = e.duration;
  }
  restoreLongform(e); // its windows, and what a long-form duration switches off (takes, loudness) or back on
  $("prompt").focus();
}
