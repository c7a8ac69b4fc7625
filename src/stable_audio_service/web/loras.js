// LoRA adapters (GET /loras): which the service offers, the ones chosen for the next request with their
// strengths, in order, and their part of the request body.

import { $, fmt } from "./util.js";
import { api } from "./api.js";

export const loras = {
  chosen: [], // [{name, strength}], in the order the service applies them
  max: 4,
  bounds: { default: 1, minimum: -10, maximum: 10 },

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
    const usable = new Set(list.loras.filter((a) => a.fits).map((a) => a.name));
    this.chosen = this.chosen.filter((c) => usable.has(c.name));
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
    const broken = list.loras.length - usable.size;
    $("lora-hint").textContent = !list.loras.length
      ? "The service's adapter directory is empty."
      : `Strength scales an adapter's change: 1 as trained, 0 off, negative subtracts it ` +
        `(${fmt(this.bounds.minimum)} to ${fmt(this.bounds.maximum)}). At most ${this.max} per request.` +
        (broken ? ` ${broken} file(s) cannot be used with this model (GET /loras says why).` : "");
    this.render();
  },

  add() {
    const name = $("lora-pick").value;
    if (!name || this.chosen.length >= this.max) return;
    this.chosen.push({ name, strength: this.bounds.default ?? 1 });
    this.render();
    const inputs = $("loras").querySelectorAll("input");
    if (inputs.length) inputs[inputs.length - 1].focus();
  },

  render() {
    $("loras").replaceChildren(
      ...this.chosen.map((c, i) => {
        const li = document.createElement("li");
        const label = document.createElement("label");
        label.textContent = `${i + 1}. ${c.name}, strength `;
        const input = document.createElement("input");
        Object.assign(input, { type: "number", step: "0.05", value: String(c.strength) });
        input.min = this.bounds.minimum;
        input.max = this.bounds.maximum;
        input.dataset.i = String(i);
        input.addEventListener("input", () => {
          c.strength = input.value.trim() === "" ? NaN : Number(input.value);
        });
        label.append(input);
        const remove = document.createElement("button");
        Object.assign(remove, { type: "button", className: "secondary small", textContent: "Remove" });
        remove.setAttribute("aria-label", `Remove ${c.name}`);
        remove.addEventListener("click", () => {
          this.chosen.splice(i, 1);
          this.render();
        });
        li.append(label, remove);
        return li;
      }),
    );
    $("lora-add").disabled = this.chosen.length >= this.max || !$("lora-pick").value;
  },

  // The request's `loras`, or null (a strength that is not a number goes as null: the service names it).
  body() {
    if ($("lora-box").hidden || !this.chosen.length) return null;
    return this.chosen.map((c) => ({ name: c.name, strength: Number.isFinite(c.strength) ? c.strength : null }));
  },
};
