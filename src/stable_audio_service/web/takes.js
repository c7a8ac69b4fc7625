// Takes (the request's `num_outputs`): the form's control with its bounds from GET /models `fields.num_outputs`,
// its part of the request body, checked first, restored from history, switched off (with the reason) while the
// request is long-form; and a finished job's takes as a grid, each with its player, seed and download.

import { $ } from "./util.js";
import { state } from "./state.js";

let blocked = null; // why takes cannot be asked for now (long-form audio), or null

function bounds() {
  const f = state.models && state.models.fields ? state.models.fields.num_outputs : null;
  return f || null;
}

function hint() {
  const b = bounds();
  if (!b) return;
  $("num_outputs-hint").textContent = blocked
    ? blocked
    : `${b.minimum}–${b.maximum}: one batch, seeds seed, seed + 1, …; each take is the clip its seed makes alone.`;
}

// GET /models: the field's bounds; a service without the field hides the control (nothing is sent).
export function applyTakes() {
  const b = bounds();
  $("takes-box").hidden = !b;
  if (!b) return;
  const input = $("num_outputs");
  input.min = b.minimum;
  input.max = b.maximum;
  if (input.value === "") input.value = b.default ?? 1;
  hint();
}

// Long-form audio is made one take at a time: the control is switched off, shows 1 and says why (null: on again,
// with the number chosen before).
export function blockTakes(why) {
  const input = $("num_outputs");
  const was = blocked;
  blocked = why || null;
  if (blocked && !was) {
    input.dataset.kept = input.value;
    input.value = 1;
  } else if (!blocked && was) {
    input.value = input.dataset.kept || 1;
  }
  input.disabled = !!blocked;
  hint();
}

// The body's `num_outputs`: undefined for one take (the service's default), a number, or NaN when the box holds
// no number (checkTakes says so). Nothing while the control is switched off.
export function takesBody() {
  if (!bounds() || blocked) return undefined;
  const input = $("num_outputs");
  if (input.validity.badInput) return NaN;
  if (input.value.trim() === "") return undefined;
  const n = Number(input.value);
  return n === 1 ? undefined : n;
}

// The page's own check, worded as the service's: [{field, msg}] (empty when it may go).
export function checkTakes(body) {
  const n = body.num_outputs;
  const b = bounds();
  if (n === undefined || !b) return [];
  if (!Number.isFinite(n)) return [{ field: "num_outputs", msg: "not a number" }];
  if (!Number.isInteger(n)) return [{ field: "num_outputs", msg: "must be a whole number" }];
  if (n < b.minimum || n > b.maximum) {
    return [{ field: "num_outputs", msg: `must be between ${b.minimum} and ${b.maximum}` }];
  }
  const top = state.models.fields.seed ? state.models.fields.seed.maximum : null;
  if (body.seed !== undefined && top != null && body.seed + n - 1 > top) {
    const msg = `the takes use seeds seed to seed + ${n - 1}, which must be at most ${top}; lower the seed`;
    return [{ field: "seed", msg }];
  }
  return [];
}

// History's "Reuse settings": the number of takes the entry asked for.
export function restoreTakes(n) {
  if (!bounds()) return;
  const input = $("num_outputs");
  if (blocked) input.dataset.kept = n && n > 1 ? n : 1; // shown once the request is short again
  else input.value = n && n > 1 ? n : 1;
}

// "seeds 7–10 (4 takes)" for an entry of several takes, else "".
export function takesText(entry) {
  const takes = entry.takes || [];
  if (takes.length < 2) return "";
  return `seeds ${takes[0].seed}–${takes[takes.length - 1].seed} (${takes.length} takes)`;
}

// The result's grid: one card per take with its player, seed and download; `pick(i)` shows take i's pictures.
// Returns the object URLs it made (the caller revokes them when another result is shown).
export function renderTakes(entry, shown, fileName, pick) {
  const list = $("takes");
  const takes = entry.takes || [];
  const urls = [];
  list.replaceChildren(
    ...takes.map((take, i) => {
      const url = URL.createObjectURL(take.blob);
      urls.push(url);
      const li = document.createElement("li");
      li.className = "take";
      li.dataset.take = String(i);
      li.dataset.seed = String(take.seed);
      const title = document.createElement("p");
      title.className = "take-title";
      title.textContent = `Take ${i + 1} · seed ${take.seed}`;
      const audio = document.createElement("audio");
      audio.controls = true;
      audio.preload = "metadata";
      audio.src = url;
      audio.dataset.url = take.url || "";
      audio.setAttribute("aria-label", `Play take ${i + 1} (seed ${take.seed})`);
      const row = document.createElement("div");
      row.className = "row wrap";
      const pictures = document.createElement("button");
      pictures.type = "button";
      pictures.className = "secondary small";
      pictures.setAttribute("aria-pressed", String(i === shown));
      pictures.append("Pictures", hidden(` of take ${i + 1}`));
      pictures.addEventListener("click", () => pick(i));
      const a = document.createElement("a");
      a.className = "button secondary small";
      a.href = url;
      a.download = fileName(take.seed);
      a.append("Download", hidden(` take ${i + 1}: ${a.download}`));
      row.append(pictures, a);
      li.append(title, audio, row);
      return li;
    }),
  );
  $("takes-box-result").hidden = takes.length < 2;
  if (takes.length > 1) {
    $("takes-caption").textContent =
      `${takes.length} takes from seeds ${takes[0].seed} to ${takes[takes.length - 1].seed}, made in one batch; ` +
      `the pictures below are take ${shown + 1}'s.`;
  }
  return urls;
}

// The grid's "Pictures" buttons say which take the pictures are of.
export function markShownTake(shown, count) {
  for (const b of $("takes").querySelectorAll("li button[aria-pressed]")) {
    b.setAttribute("aria-pressed", String(Number(b.closest("li").dataset.take) === shown));
  }
  const caption = $("takes-caption");
  if (count > 1) caption.textContent = caption.textContent.replace(/take \d+'s\.$/, `take ${shown + 1}'s.`);
}

function hidden(text) {
  const span = document.createElement("span");
  span.className = "visually-hidden";
  span.textContent = text;
  return span;
}
