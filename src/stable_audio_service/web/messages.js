// Errors shown to the person: the page's alert, and a 422's field errors placed beside the field they are
// about (the form's fields, the source, the strength, the regions, the adapters).

import { $ } from "./util.js";
import { state } from "./state.js";
import { FIELDS } from "./form.js";

export function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// Request fields of the editing modes: where their errors go and which control they belong to.
const EDIT_FIELDS = {
  init_audio_b64: { error: "source-error", control: "source-file" },
  inpaint_audio_b64: { error: "source-error", control: "source-file" },
  init_noise_level: { error: "init_noise_level-error", control: "strength" },
  inpaint_regions: { error: "regions-error", control: null },
  loras: { error: "loras-error", control: null }, // each item's own input is outlined (loraTarget)
};

const LORA_WORDS = {
  strength: "strength",
  conditioner_strength: "conditioner strength",
  "interval-min": "sigma from",
  "interval-max": "sigma to",
  layer_filter: "layers",
  name: "name",
};

// The input of adapter i's control `key` (a data-key of loras.js); for its name, its Remove button.
function loraTarget(i, key) {
  if (key === "name") return $("loras").querySelector(`li[data-i="${i}"] button`);
  return $("loras").querySelector(`input[data-i="${i}"][data-key="${key}"]`);
}

function loraText(i, key, msg) {
  const input = $("loras").querySelector(`input[data-i="${i}"][data-key="strength"]`);
  const name = input ? input.closest("li").querySelector("label").firstChild.textContent : `${i + 1}.`;
  return `Adapter ${name.replace(/, strength\s*$/, "")} ${LORA_WORDS[key] || key}: ${msg}`;
}

function markLora(i, key, msg) {
  const target = loraTarget(i, key);
  if (target && key !== "name") target.setAttribute("aria-invalid", "true");
  if (target && target.closest("details")) target.closest("details").open = true;
  const el = $("loras-error");
  const text = loraText(i, key, msg);
  el.textContent = el.hidden || !el.textContent ? text : `${el.textContent}\n${text}`;
  el.hidden = false;
  return target;
}

export function clearFieldErrors() {
  for (const name of FIELDS) {
    const el = $(`${name}-error`);
    if (el) {
      el.textContent = "";
      el.hidden = true;
    }
    $(name).removeAttribute("aria-invalid");
  }
  for (const { error, control } of Object.values(EDIT_FIELDS)) {
    // the source's own message (too large, unreadable) stays until another source is chosen
    if (error !== "source-error" || state.source) {
      $(error).textContent = "";
      $(error).hidden = true;
    }
    if (control) $(control).removeAttribute("aria-invalid");
  }
  for (const input of $("regions").querySelectorAll("input")) input.removeAttribute("aria-invalid");
  for (const input of $("loras").querySelectorAll("input")) input.removeAttribute("aria-invalid");
  $("lora-pick").removeAttribute("aria-invalid");
}

// What the page found wrong before sending (checks.js, loras.check()): each message beside its field, the
// field outlined, the first one focused, and all of them in the page's alert. Nothing is sent.
export function showProblems(fields, adapters = []) {
  let first = null;
  const lines = [];
  for (const { field, msg } of fields) {
    const el = $(`${field}-error`);
    el.textContent = el.hidden || !el.textContent ? msg : `${el.textContent} ${msg}`;
    el.hidden = false;
    $(field).setAttribute("aria-invalid", "true");
    first = first || $(field);
    const label = document.querySelector(`label[for="${field}"]`);
    lines.push(`${label ? label.firstChild.textContent.trim() : field}: ${msg}`);
  }
  for (const { i, key, msg } of adapters) {
    first = first || markLora(i, key, msg);
    lines.push(loraText(i, key, msg));
  }
  if (first) first.focus();
  showError(`Not sent. ${lines.join("\n")}`);
}

// A 422 about an editing field: shown beside the source, the strength or the regions.
function showEditFieldError(loc, msg) {
  const name = loc.find((p) => typeof p === "string" && p in EDIT_FIELDS);
  if (!name) return null;
  const at = loc.indexOf(name);
  if (name === "loras" && Number.isInteger(loc[at + 1])) {
    let key = loc[at + 2] || "name";
    if (key === "interval") key = loc[at + 3] === 1 ? "interval-max" : "interval-min";
    return markLora(loc[at + 1], key, msg);
  }
  if (name === "loras") $("lora-pick").setAttribute("aria-invalid", "true");
  const { error, control } = EDIT_FIELDS[name];
  let text = msg;
  let target = control ? $(control) : null;
  if (name === "inpaint_regions") {
    const i = loc[loc.indexOf(name) + 1];
    if (Number.isInteger(i)) {
      text = `Region ${i + 1}: ${msg}`;
      const key = loc[loc.indexOf(name) + 2] === "end_s" ? "end" : "start";
      target = $("regions").querySelector(`input[data-i="${i}"][data-key="${key}"]`);
      if (target) target.setAttribute("aria-invalid", "true");
    }
  }
  const el = $(error);
  el.textContent = el.hidden || !el.textContent ? text : `${el.textContent} ${text}`;
  el.hidden = false;
  if (control) $(control).setAttribute("aria-invalid", "true");
  return target;
}

export function showApiError(err, fallbackPrefix) {
  if (err.status === 401 || err.status === 403) {
    const box = $("token-box");
    box.open = true;
    $("token-note").textContent = "The service needs a token: enter it here.";
    $("token").focus();
  }
  if (err.status === 422 && Array.isArray(err.detail)) {
    let first = null;
    for (const d of err.detail) {
      const loc = Array.isArray(d.loc) ? d.loc : [];
      const name = loc[loc.length - 1];
      const el = typeof name === "string" ? $(`${name}-error`) : null;
      if (el && FIELDS.includes(name)) {
        el.textContent = el.hidden ? d.msg : `${el.textContent} ${d.msg}`;
        el.hidden = false;
        $(name).setAttribute("aria-invalid", "true");
        first = first || $(name);
      } else {
        const control = showEditFieldError(loc, d.msg);
        first = first || control;
      }
    }
    if (first) first.focus();
  }
  const status = err.status ? ` (${err.status})` : "";
  showError(`${fallbackPrefix}${status}: ${err.message}`);
}
