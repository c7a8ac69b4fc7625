// LoRA adapters (GET /loras): which the service offers (and why a file cannot be used), the ones chosen for the
// next request with their strengths and per-adapter controls (conditioner strength, sigma interval, layer filter),
// in order; their part of the request body, checked first; restoring them from history; describing them.

import { $, fmt } from "./util.js";
import { api } from "./api.js";

const INTERVAL = [0, 1]; // the service's default: active at every step

// One chosen adapter as the form holds it: numbers (NaN when not a number), the filter as typed.
function chosenItem(name, strength) {
  return { name, strength, conditioner: null, interval: [...INTERVAL], filter: "", open: false };
}

function num(input) {
  return input.value.trim() === "" ? null : input.validity.badInput ? NaN : Number(input.value);
}

function filterList(text) {
  return text
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s);
}

export const loras = {
  chosen: [], // chosenItem()s, in the order the service applies them
  max: 4,
  bounds: { default: 1, minimum: -10, maximum: 10 },
  controls: null, // GET /loras `controls`: each control's default and bounds
  usable: new Set(),
  missing: [], // names restored from history that this service does not offer

  async apply(m) {
    const on = !!(m.capabilities && m.capabilities.loras);
    $("lora-box").hidden = !on;
    if (!on) {
      this.chosen = [];
      this.render();
      return;
    }
    let list;
    try {
      list = await api("loras");
    } catch (err) {
      $("lora-hint").textContent = `Adapters could not be listed: ${err.message}`;
      return;
    }
    this.max = list.max_per_request || this.max;
    this.bounds = list.strength || this.bounds;
    this.controls = list.controls || null;
    this.usable = new Set(list.loras.filter((a) => a.fits).map((a) => a.name));
    this.chosen = this.chosen.filter((c) => this.usable.has(c.name));
    $("lora-pick").replaceChildren(
      ...list.loras.map((a) => {
        const o = document.createElement("option");
        o.value = a.name;
        o.disabled = !a.fits;
        o.textContent = a.fits ? `${a.name} (${a.adapter_type}, rank ${a.rank})` : `${a.name}: cannot be used`;
        if (!a.fits) o.title = a.problem || "";
        return o;
      }),
    );
    const first = list.loras.find((a) => a.fits);
    if (first) $("lora-pick").value = first.name;
    $("lora-hint").textContent = !list.loras.length
      ? "The service's adapter directory is empty."
      : `Strength scales an adapter's change: 1 as trained, 0 off, negative subtracts it ` +
        `(${fmt(this.bounds.minimum)} to ${fmt(this.bounds.maximum)}). At most ${this.max} per request. ` +
        "Advanced: the conditioner's own strength, the noise levels (sigma, 1 at the start to 0 at the end) " +
        "in which it acts, and layers where it does not act.";
    // each file that cannot be used, with the service's reason
    const broken = list.loras.filter((a) => !a.fits);
    $("lora-problems").replaceChildren(
      ...broken.map((a) => {
        const li = document.createElement("li");
        li.textContent = `${a.name} cannot be used: ${a.problem || "it does not fit this model"}.`;
        return li;
      }),
    );
    this.render();
  },

  add() {
    const name = $("lora-pick").value;
    if (!name || this.chosen.length >= this.max) return;
    this.chosen.push(chosenItem(name, this.bounds.default ?? 1));
    this.render();
    const inputs = $("loras").querySelectorAll('input[data-key="strength"]');
    if (inputs.length) inputs[inputs.length - 1].focus();
  },

  render() {
    $("loras").replaceChildren(...this.chosen.map((c, i) => this.row(c, i)));
    $("lora-add").disabled = this.chosen.length >= this.max || !$("lora-pick").value;
    const note = this.missing.length
      ? `Not offered by this service any more, so left out: ${this.missing.join(", ")}.`
      : "";
    $("lora-missing").textContent = note;
    $("lora-missing").hidden = !note;
  },

  row(c, i) {
    const li = document.createElement("li");
    li.dataset.i = String(i);
    const field = (key, text, attrs, read) => {
      const label = document.createElement("label");
      const who = document.createElement("span");
      who.className = "visually-hidden";
      who.textContent = `${i + 1}. ${c.name}, `;
      const input = document.createElement("input");
      Object.assign(input, attrs);
      input.dataset.i = String(i);
      input.dataset.key = key;
      input.addEventListener("input", () => {
        read(input);
        input.removeAttribute("aria-invalid");
      });
      label.append(who, text, input);
      return label;
    };
    const numeric = (value, min, max, step) => ({
      type: "number",
      inputMode: "decimal",
      step,
      min: String(min),
      max: String(max),
      value: value == null || Number.isNaN(value) ? "" : String(value),
    });
    const b = this.bounds;
    const strength = document.createElement("label");
    strength.textContent = `${i + 1}. ${c.name}, strength `;
    const si = document.createElement("input");
    Object.assign(si, numeric(c.strength, b.minimum, b.maximum, "0.05"));
    si.dataset.i = String(i);
    si.dataset.key = "strength";
    si.addEventListener("input", () => {
      c.strength = num(si) ?? NaN;
      si.removeAttribute("aria-invalid");
    });
    strength.append(si);
    const remove = document.createElement("button");
    Object.assign(remove, { type: "button", className: "secondary small", textContent: "Remove" });
    remove.setAttribute("aria-label", `Remove ${c.name}`);
    remove.addEventListener("click", () => {
      this.chosen.splice(i, 1);
      this.render();
    });
    const more = document.createElement("details");
    more.className = "lora-advanced";
    more.open = c.open || hasControls(c);
    more.addEventListener("toggle", () => (c.open = more.open));
    const summary = document.createElement("summary");
    summary.textContent = "Advanced";
    const who = document.createElement("span");
    who.className = "visually-hidden";
    who.textContent = ` controls of ${i + 1}. ${c.name}`;
    summary.append(who);
    const cs = this.controls && this.controls.conditioner_strength;
    const body = document.createElement("div");
    body.className = "lora-controls";
    body.append(
      field("conditioner_strength", "Conditioner strength ", numeric(c.conditioner, cs ? cs.minimum : b.minimum, cs ? cs.maximum : b.maximum, "0.05"), (input) => {
        c.conditioner = num(input);
      }),
      field("interval-min", "Active from sigma ", numeric(c.interval[0], 0, 1, "0.01"), (input) => {
        c.interval[0] = num(input) ?? NaN;
      }),
      field("interval-max", "to ", numeric(c.interval[1], 0, 1, "0.01"), (input) => {
        c.interval[1] = num(input) ?? NaN;
      }),
      field("layer_filter", "Not in layers ", { type: "text", value: c.filter, placeholder: "e.g. transformer.layers.0, cross_attn" }, (input) => {
        c.filter = input.value;
      }),
    );
    for (const input of body.querySelectorAll("input")) input.setAttribute("aria-describedby", `lora-advanced-hint-${i}`);
    const hint = document.createElement("p");
    hint.className = "hint";
    hint.textContent =
      "Conditioner strength: empty is the same as strength. Sigma goes from 1 (first step) to 0 (last): the " +
      "adapter acts on the DiT only at steps inside the range. Layers: comma-separated parts of DiT layer names.";
    hint.id = `lora-advanced-hint-${i}`;
    more.append(summary, body, hint);
    li.append(strength, remove, more);
    return li;
  },

  // What the page checks before sending: each adapter's numbers against GET /loras `controls`.
  // [{i, key, msg}] (key: the control's data-key); empty when all is well.
  check() {
    if ($("lora-box").hidden) return [];
    const out = [];
    const b = this.bounds;
    const cs = (this.controls && this.controls.conditioner_strength) || b;
    const maxItems = (this.controls && this.controls.layer_filter && this.controls.layer_filter.max_items) || 32;
    const maxLength = (this.controls && this.controls.layer_filter && this.controls.layer_filter.max_length) || 200;
    const range = (v, lo, hi) => (Number.isFinite(v) ? (v < lo || v > hi ? `must be between ${fmt(lo)} and ${fmt(hi)}` : "") : "not a number");
    this.chosen.forEach((c, i) => {
      const add = (key, msg) => msg && out.push({ i, key, msg });
      add("strength", range(c.strength, b.minimum, b.maximum));
      if (c.conditioner !== null) add("conditioner_strength", range(c.conditioner, cs.minimum, cs.maximum));
      const [lo, hi] = c.interval;
      add("interval-min", range(lo, 0, 1));
      add("interval-max", range(hi, 0, 1));
      if (Number.isFinite(lo) && Number.isFinite(hi) && lo > hi) add("interval-max", `must not be below the start (${fmt(lo)})`);
      const parts = filterList(c.filter);
      if (parts.length > maxItems) add("layer_filter", `at most ${maxItems} parts`);
      const long = parts.find((p) => p.length > maxLength);
      if (long) add("layer_filter", `each part at most ${maxLength} characters`);
    });
    return out;
  },

  // The request's `loras`, or null. Controls at their defaults are left out (the service's defaults).
  body() {
    if ($("lora-box").hidden || !this.chosen.length) return null;
    return this.chosen.map((c) => {
      const item = { name: c.name, strength: Number.isFinite(c.strength) ? c.strength : null };
      if (c.conditioner !== null) item.conditioner_strength = Number.isFinite(c.conditioner) ? c.conditioner : null;
      if (c.interval[0] !== INTERVAL[0] || c.interval[1] !== INTERVAL[1]) item.interval = [...c.interval];
      const parts = filterList(c.filter);
      if (parts.length) item.layer_filter = parts;
      return item;
    });
  },

  // Puts a history entry's adapters back (its request's `loras` items); those not offered now are named.
  restore(items) {
    const list = Array.isArray(items) ? items : [];
    this.missing = list.filter((l) => !this.usable.has(l.name)).map((l) => l.name);
    this.chosen = list
      .filter((l) => this.usable.has(l.name))
      .slice(0, this.max)
      .map((l) => {
        const c = chosenItem(l.name, l.strength);
        if (l.conditioner_strength != null) c.conditioner = l.conditioner_strength;
        if (Array.isArray(l.interval)) c.interval = [...l.interval];
        if (Array.isArray(l.layer_filter)) c.filter = l.layer_filter.join(", ");
        return c;
      });
    this.render();
  },
};

function hasControls(c) {
  return c.conditioner !== null || c.interval[0] !== INTERVAL[0] || c.interval[1] !== INTERVAL[1] || !!c.filter.trim();
}

// Request `loras` items as words, for the result's facts and the history: "a 0.7 (conditioner 0.5, sigma
// 0.2–0.8, not in: x, y); b 0.3".
export function lorasText(items) {
  if (!Array.isArray(items) || !items.length) return "";
  return items
    .map((l) => {
      const extra = [];
      if (l.conditioner_strength != null) extra.push(`conditioner ${fmt(l.conditioner_strength)}`);
      if (Array.isArray(l.interval)) extra.push(`sigma ${fmt(l.interval[0])}–${fmt(l.interval[1])}`);
      if (Array.isArray(l.layer_filter) && l.layer_filter.length) extra.push(`not in: ${l.layer_filter.join(", ")}`);
      return `${l.name} ${fmt(l.strength)}${extra.length ? ` (${extra.join(", ")})` : ""}`;
    })
    .join("; ");
}
