// Stable Audio playground: plain JavaScript, no build step, no third-party code.
// Talks to the service it was served from (relative URLs), so it also works under a path prefix.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const NUMERIC = ["duration", "num_inference_steps", "guidance_scale", "seed"];
  const FIELDS = ["prompt", "negative_prompt", ...NUMERIC, "format"];
  const MIME = { wav: "audio/wav", flac: "audio/flac", ogg: "audio/ogg", mp3: "audio/mpeg" };
  const HISTORY_MAX = 8;
  const TOKEN_KEY = "stable-audio-token";
  const MAX_REGIONS = 16; // the service's cap on inpaint_regions
  const MIN_REGION_S = 0.05;
  const MODES = ["text", "a2a", "inpaint"];

  const state = {
    models: null, // GET /models
    job: null, // {id, abort: AbortController, started, cancelling}
    shown: null, // the history entry in the result panel
    shownUrl: null,
    shownSourceUrl: null, // the shown entry's source (edits), for the A/B toggle
    decoded: null, // {channels, mono, sampleRate} of the shown clip, for redraws
    decodedSource: null, // the same for the shown entry's source
    ab: "after",
    historyUrls: new Map(),
    caps: null, // what the loaded model can do (capabilities, or audio_inputs before it)
    mode: "text",
    textDuration: null, // the duration typed for text-to-audio, restored when coming back to it
    source: null, // {blob, name, format, bytes, seconds, decoded, note, b64: Promise<string>|null}
    sourceUrl: null,
    sourceSeq: 0,
    regions: [], // [{start, end}] seconds on the output's timeline (aligned with the source)
    drag: null,
    recorder: null,
  };

  // ---------------------------------------------------------------- API calls --
  class ApiError extends Error {
    constructor(status, detail) {
      super(describeDetail(detail, status));
      this.status = status;
      this.detail = detail;
    }
  }

  function describeDetail(detail, status) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail
        .map((d) => {
          const loc = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body").join(".") : "";
          return loc ? `${loc}: ${d.msg}` : String(d.msg);
        })
        .join("\n");
    }
    if (detail && typeof detail === "object") return JSON.stringify(detail);
    return `HTTP ${status}`;
  }

  function token() {
    return $("token").value.trim();
  }

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    if (token()) h.Authorization = `Bearer ${token()}`;
    return h;
  }

  // A file (the finished job's audio) as an ArrayBuffer; errors as for api().
  async function apiBytes(path) {
    let response;
    try {
      response = await fetch(path, { headers: headers(), cache: "no-store" });
    } catch (err) {
      throw new ApiError(0, `could not reach the service (${err.message})`);
    }
    if (!response.ok) {
      let detail = response.statusText;
      try {
        detail = (await response.json()).detail;
      } catch {
        /* not JSON */
      }
      throw new ApiError(response.status, detail);
    }
    return response.arrayBuffer();
  }

  async function api(path, { method = "GET", body, raw, signal } = {}) {
    let response;
    const payload = raw !== undefined ? raw : body !== undefined ? JSON.stringify(body) : undefined;
    try {
      response = await fetch(path, {
        method,
        signal,
        headers: headers(payload !== undefined ? { "Content-Type": "application/json" } : undefined),
        body: payload,
        cache: "no-store",
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, `could not reach the service (${err.message})`);
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      const detail = data && data.detail !== undefined ? data.detail : text || response.statusText;
      throw new ApiError(response.status, detail);
    }
    return data;
  }

  // Server-Sent Events over fetch(): EventSource cannot send an Authorization header.
  async function streamEvents(jobId, signal, onEvent) {
    const response = await fetch(`jobs/${encodeURIComponent(jobId)}/events`, {
      headers: headers({ Accept: "text/event-stream" }),
      signal,
      cache: "no-store",
    });
    if (!response.ok) {
      let detail = response.statusText;
      try {
        detail = (await response.json()).detail;
      } catch {
        /* not JSON */
      }
      throw new ApiError(response.status, detail);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return null;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        let type = "message";
        const data = [];
        for (const line of block.split(/\r?\n/)) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const name = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (name === "event") type = val;
          else if (name === "data") data.push(val);
        }
        if (!data.length) continue;
        let payload;
        try {
          payload = JSON.parse(data.join("\n"));
        } catch {
          continue;
        }
        payload.type = payload.type || type;
        onEvent(payload);
        if (["done", "failed", "cancelled"].includes(payload.type)) {
          reader.cancel().catch(() => {});
          return payload;
        }
      }
    }
  }

  // ---------------------------------------------------------------- messages --
  function showError(message) {
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
    loras: { error: "loras-error", control: "lora-pick" },
  };

  function clearFieldErrors() {
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
  }

  // A 422 about an editing field: shown beside the source, the strength or the regions.
  function showEditFieldError(loc, msg) {
    const name = loc.find((p) => typeof p === "string" && p in EDIT_FIELDS);
    if (!name) return null;
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

  function showApiError(err, fallbackPrefix) {
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

  // ---------------------------------------------------------------- the form --
  function fmt(n) {
    return Number.isInteger(n) ? String(n) : String(Number(n.toFixed(3)));
  }

  function applyModel(m) {
    state.models = m;
    const f = m.fields;
    for (const name of ["duration", "num_inference_steps", "guidance_scale"]) {
      const input = $(name);
      const b = f[name];
      input.min = b.minimum;
      input.max = b.maximum;
      if (input.value === "") input.value = b.default;
      const unit = name === "duration" ? " s" : "";
      $(`${name}-hint`).textContent = `${fmt(b.minimum)}–${fmt(b.maximum)}${unit}, default ${fmt(b.default)}`;
    }
    $("seed").min = f.seed.minimum;
    $("seed").max = f.seed.maximum;
    $("seed-hint").textContent = `${f.seed.minimum}–${f.seed.maximum}; empty: random.`;
    const select = $("format");
    const current = select.value;
    select.replaceChildren(
      ...f.format.choices.map((c) => {
        const o = document.createElement("option");
        o.value = c;
        o.textContent = c.toUpperCase();
        return o;
      }),
    );
    select.value = current && f.format.choices.includes(current) ? current : f.format.default;
    if (f.prompt && f.prompt.max_length) {
      $("prompt").maxLength = f.prompt.max_length;
      $("negative_prompt").maxLength = f.prompt.max_length;
    }
    const ch = m.channels === 2 ? "stereo" : m.channels === 1 ? "mono" : `${m.channels} channels`;
    $("model-line").textContent =
      `Model ${m.name} (${m.family}) on ${m.device}/${m.dtype} · ${m.sample_rate / 1000} kHz ${ch}`;
    applyCapabilities(m);
    $("generate").disabled = !!state.job;
    document.body.dataset.ready = "1";
  }

  // ---------------------------------------------------------------- what the model can do --
  // GET /models carries `capabilities`; services from before it have the same facts under `audio_inputs`.
  function readCapabilities(m) {
    const c = m.capabilities || {};
    const a = m.audio_inputs || {};
    const pick = (key) => (c[key] !== undefined ? c[key] : a[key]);
    const inpainting = !!pick("inpainting");
    const uploads = pick("uploads") || null;
    return {
      audioToAudio: !!pick("audio_to_audio"),
      noise: pick("init_noise_level") || null,
      inpainting,
      continuation: c.continuation !== undefined ? !!c.continuation : inpainting,
      maxDuration: c.max_duration ?? m.max_duration ?? m.fields.duration.maximum,
      maxBytes: uploads && uploads.max_bytes ? uploads.max_bytes : null,
      maxSeconds: uploads && uploads.max_seconds ? uploads.max_seconds : null,
      maxBodyBytes: (uploads && uploads.max_body_bytes) || c.max_body_bytes || m.max_body_bytes || null,
      formats: uploads && uploads.formats ? uploads.formats : ["wav", "flac", "ogg", "mp3"],
    };
  }

  function modelLabel(m) {
    return m.family_title ? `${m.family_title} (family ${m.family})` : `this model (family ${m.family})`;
  }

  function applyCapabilities(m) {
    const caps = readCapabilities(m);
    state.caps = caps;
    const notes = [];
    $("mode-a2a-label").hidden = !caps.audioToAudio;
    $("mode-inpaint-label").hidden = !caps.inpainting && !caps.continuation;
    if (!caps.audioToAudio) {
      notes.push(`Audio to audio: not available, ${modelLabel(m)} does not take a source audio.`);
    } else if (!caps.noise) {
      notes.push(
        `Audio to audio on ${modelLabel(m)} barely changes the output: it adds the source's latents to ` +
          "full-strength noise (diffusers' initial_audio_waveforms), which the sampler all but erases, so the " +
          "result is practically the text-to-audio result of the same seed, and there is no strength to set. " +
          "Serve a Stable Audio 3 model for real audio-to-audio.",
      );
    }
    if (!caps.inpainting) {
      notes.push(
        `Inpainting and continuation: not available, ${modelLabel(m)} has no inpainting. ` +
          "Serve a Stable Audio 3 model to regenerate parts of a clip or extend it.",
      );
    }
    // The service's own notes on the model, where this page has no words of its own for it.
    if (!notes.length && Array.isArray(m.capabilities && m.capabilities.notes)) notes.push(...m.capabilities.notes);
    const noAdapters = m.capabilities && m.capabilities.loras_unavailable;
    if (noAdapters) notes.push(`LoRA adapters: not available, ${noAdapters}.`);
    $("mode-notes").replaceChildren(
      ...notes.map((t) => {
        const li = document.createElement("li");
        li.textContent = t;
        return li;
      }),
    );
    const strength = $("strength");
    if (caps.noise) {
      const lo = caps.noise.minimum ?? caps.noise.minimum_exclusive ?? 0;
      const step = Number(strength.step) || 0.01;
      strength.min = lo > 0 ? lo : step; // 0 would keep the source unchanged; the service wants > 0
      strength.max = caps.noise.maximum ?? 1;
      if (!strength.dataset.touched) strength.value = caps.noise.default ?? 0.6;
      showStrength();
    }
    const limits = [];
    if (caps.maxBytes) limits.push(`up to ${bytesText(caps.maxBytes)}`);
    if (caps.maxSeconds) limits.push(`${fmt(caps.maxSeconds)} s`);
    $("source-limits").textContent =
      `${caps.formats.map((f) => f.toUpperCase()).join(", ")}` +
      (limits.length ? `, ${limits.join(" and ")}. ` : ". ") +
      "Other formats the browser can read, and recordings, are converted to WAV here. " +
      `The model uses at most ${fmt(caps.maxDuration)} s of it.`;
    const editable = caps.audioToAudio || caps.inpainting || caps.continuation;
    $("use-result").hidden = !editable;
    // a mode the model cannot do falls back to text-to-audio
    const usable = { text: true, a2a: caps.audioToAudio, inpaint: caps.inpainting || caps.continuation };
    setMode(usable[state.mode] ? state.mode : "text");
    document.body.dataset.editModes = MODES.filter((k) => usable[k]).join(" ");
    saved.render(); // history items offer "Edit" only where the model can edit
    loras.apply(m);
  }

  // ---------------------------------------------------------------- LoRA adapters (GET /loras) --
  const loras = {
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

  function bytesText(n) {
    const mb = n / 1e6;
    const human = mb >= 1 ? `${fmt(Number(mb.toFixed(2)))} MB` : `${fmt(Number((n / 1e3).toFixed(1)))} kB`;
    return `${human} (${n} bytes)`;
  }

  function showStrength() {
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

  let modelsTimer = null;
  async function loadModels() {
    clearTimeout(modelsTimer);
    try {
      applyModel(await api("models"));
      showError("");
    } catch (err) {
      if (err.status === 401 || err.status === 403) {
        $("model-line").textContent = "The service needs an API token.";
        showApiError(err, "Model info");
      } else {
        $("model-line").textContent = `Service not ready: ${err.message}. Retrying…`;
        modelsTimer = setTimeout(loadModels, 3000);
      }
    }
  }

  function randomSeed() {
    const max = state.models ? state.models.fields.seed.maximum : 2 ** 32 - 1;
    const min = state.models ? state.models.fields.seed.minimum : 0;
    const u = new Uint32Array(1);
    crypto.getRandomValues(u);
    return min + (u[0] % (max - min + 1));
  }

  function readForm() {
    const body = { prompt: $("prompt").value };
    const neg = $("negative_prompt").value;
    if (neg.trim()) body.negative_prompt = neg;
    const bad = [];
    for (const name of NUMERIC) {
      const input = $(name);
      if (input.validity.badInput) {
        bad.push(name);
        continue;
      }
      if (input.value.trim() === "") continue; // the service's default (or a random seed)
      body[name] = Number(input.value);
    }
    body.format = $("format").value;
    const adapters = loras.body();
    if (adapters) body.loras = adapters;
    return { body, bad };
  }

  function setBusy(busy) {
    $("generate").disabled = busy || !state.models;
    $("cancel").hidden = !busy;
    $("cancel").disabled = false;
    $("gen-form").setAttribute("aria-busy", busy ? "true" : "false");
  }

  function setProgress(text, step, total) {
    $("progress-box").hidden = false;
    const bar = $("progress");
    if (total) {
      bar.max = total;
      bar.value = step;
    } else {
      bar.removeAttribute("value"); // indeterminate while queued
    }
    const elapsed = state.job ? ` · ${((performance.now() - state.job.started) / 1000).toFixed(1)} s` : "";
    $("progress-text").textContent = text + elapsed;
  }

  async function generate(ev) {
    ev.preventDefault();
    if (state.job || !state.models) return;
    clearFieldErrors();
    showError("");
    const { body, bad } = readForm();
    if (bad.length) {
      for (const name of bad) {
        $(`${name}-error`).textContent = "not a number";
        $(`${name}-error`).hidden = false;
        $(name).setAttribute("aria-invalid", "true");
      }
      $(bad[0]).focus();
      showError(`${bad.join(", ")}: not a number`);
      return;
    }
    const edit = state.mode === "text" ? null : checkEdit(body);
    if (edit === false) return; // the reason is shown; nothing was sent
    const job = { id: null, abort: new AbortController(), started: performance.now(), cancelling: false };
    state.job = job;
    setBusy(true);
    let raw;
    if (edit) {
      setProgress("Reading the source…");
      try {
        raw = bodyWithAudio(body, edit.field, await sourceBase64(edit.source));
      } catch (err) {
        finish();
        $("progress-box").hidden = true;
        showError(`Could not read the source: ${err.message || err}`);
        return;
      }
      if (state.caps.maxBodyBytes && raw.length > state.caps.maxBodyBytes) {
        finish();
        $("progress-box").hidden = true;
        showError(
          `The request would be ${bytesText(raw.length)}, over the service's ${bytesText(state.caps.maxBodyBytes)} ` +
            "body limit (base64 adds a third to the file). Use a shorter or compressed source.",
        );
        return;
      }
    }
    setProgress("Submitting…");
    let accepted;
    try {
      accepted = await api("jobs", edit ? { method: "POST", raw } : { method: "POST", body });
    } catch (err) {
      state.job = null;
      setBusy(false);
      $("progress-box").hidden = true;
      showApiError(err, "Could not start");
      return;
    }
    job.id = accepted.id;
    document.body.dataset.jobId = job.id;
    setProgress(accepted.position ? `Queued · position ${accepted.position}` : "Starting…");
    let last = null;
    try {
      last = await streamEvents(job.id, job.abort.signal, (e) => onEvent(e));
    } catch (err) {
      if (err.name !== "AbortError" && err.status) {
        finish();
        showApiError(err, "Progress");
        return;
      }
    }
    if (!last) last = await pollUntilEnd(job); // the stream broke: ask instead
    await onTerminal(job, last, body, edit);
  }

  // Checks an editing request before anything is sent and adds its fields to `body`. Returns what the
  // request edits (kept with the result for the before/after), or false after showing why it cannot go.
  function checkEdit(body) {
    const source = state.source;
    const refuse = (message, focus) => {
      showError(message);
      if (focus) focus.focus();
      return false;
    };
    if (!source) {
      const why = $("source-error").hidden ? "" : ` ${$("source-error").textContent}`;
      return refuse(`Choose a source first: drop or pick a file, record, or edit a result.${why}`, $("source-file"));
    }
    const duration = body.duration ?? state.models.fields.duration.default;
    const kept = { blob: source.blob, name: source.name, format: source.format, seconds: source.seconds };
    if (state.mode === "a2a") {
      if (state.caps.noise) body.init_noise_level = Number($("strength").value);
      return { mode: "a2a", field: "init_audio_b64", source, kept, init_noise_level: body.init_noise_level ?? null };
    }
    const regions = state.regions.map((r) => ({ start_s: r.start, end_s: r.end }));
    for (const [i, r] of regions.entries()) {
      if (r.start_s >= duration) {
        showRegionsError(`Region ${i + 1} starts at or after the end of the output (${fmt(duration)} s).`);
        return refuse(`Region ${i + 1} starts after the output ends (${fmt(duration)} s): move it or lengthen Duration.`);
      }
    }
    const continues = state.caps.continuation && duration > source.seconds + 1e-3;
    if (!regions.length && !continues) {
      const more = state.caps.continuation
        ? `, or set Duration longer than the source (${source.seconds.toFixed(2)} s) to continue it.`
        : ".";
      return refuse(`Nothing to regenerate: drag across the source's waveform to mark a region${more}`, $("region-add"));
    }
    if (regions.length) body.inpaint_regions = regions;
    return { mode: "inpaint", field: "inpaint_audio_b64", source, kept, regions };
  }

  function onEvent(e) {
    if (e.type === "queued") {
      setProgress(e.position ? `Queued · position ${e.position}` : "Queued");
    } else if (e.type === "step" && !e.total) {
      setProgress("Starting…"); // picked up by the worker; the step count is not known yet
    } else if (e.type === "step") {
      setProgress(`Step ${e.step} of ${e.total}`, e.step, e.total);
    }
  }

  async function pollUntilEnd(job) {
    for (;;) {
      try {
        const view = await api(`jobs/${encodeURIComponent(job.id)}`);
        if (view.status === "done") return { type: "done", timings: view.timings };
        if (view.status === "failed") return { type: "failed", error: view.error };
        if (view.status === "cancelled") return { type: "cancelled" };
        if (view.status === "queued") onEvent({ type: "queued", position: view.position });
        else onEvent({ type: "step", step: view.step, total: view.total_steps });
      } catch (err) {
        if (err.status && err.status !== 503) return { type: "failed", error: err.message, status: err.status };
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  function finish() {
    state.job = null;
    setBusy(false);
  }

  async function onTerminal(job, last, body, edit) {
    if (last.type === "cancelled") {
      finish();
      setProgress("Cancelled.");
      return;
    }
    if (last.type === "failed") {
      finish();
      $("progress-box").hidden = true;
      showError(`Generation failed${last.status ? ` (${last.status})` : ""}: ${last.error || "unknown error"}`);
      return;
    }
    let view;
    try {
      view = await api(`jobs/${encodeURIComponent(job.id)}`);
    } catch (err) {
      finish();
      showApiError(err, "Could not fetch the result");
      return;
    }
    finish();
    const r = view.result;
    const total = view.total_steps || body.num_inference_steps;
    setProgress(`Done in ${r.timings && r.timings.total_s != null ? r.timings.total_s.toFixed(2) : "?"} s`, total, total);
    let bytes;
    try {
      bytes = new Uint8Array(await apiBytes(r.audio_url.replace(/^\//, "")));
    } catch (err) {
      showApiError(err, "Could not fetch the audio");
      return;
    }
    const entry = {
      id: view.id,
      created: Date.now(),
      prompt: body.prompt,
      negative_prompt: body.negative_prompt || "",
      duration: r.duration,
      num_inference_steps: total,
      guidance_scale: body.guidance_scale ?? state.models.fields.guidance_scale.default,
      seed: r.seed,
      format: r.format,
      sample_rate: r.sample_rate,
      channels: r.channels,
      timings: r.timings || {},
      blob: new Blob([bytes], { type: MIME[r.format] || "application/octet-stream" }),
      edit: edit
        ? {
            mode: edit.mode,
            source: edit.kept,
            init_noise_level: edit.init_noise_level ?? null,
            regions: edit.regions || [],
          }
        : null,
    };
    await showResult(entry);
    await saved.add(entry);
  }

  async function cancel() {
    const job = state.job;
    if (!job || !job.id || job.cancelling) return;
    job.cancelling = true;
    $("cancel").disabled = true;
    setProgress("Cancelling…");
    try {
      await api(`jobs/${encodeURIComponent(job.id)}`, { method: "DELETE" });
    } catch (err) {
      job.cancelling = false;
      $("cancel").disabled = false;
      showApiError(err, "Could not cancel");
    }
    // The event stream reports `cancelled` and ends the job in the page.
  }

  // ---------------------------------------------------------------- result --
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

  function filename(entry) {
    return `${slug(entry.prompt)}-seed${entry.seed}.${entry.format}`;
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

  function editText(entry) {
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

  async function showResult(entry) {
    state.shown = entry;
    state.ab = "after";
    if (state.shownUrl) URL.revokeObjectURL(state.shownUrl);
    if (state.shownSourceUrl) URL.revokeObjectURL(state.shownSourceUrl);
    state.shownUrl = URL.createObjectURL(entry.blob);
    state.shownSourceUrl = entry.edit ? URL.createObjectURL(entry.edit.source.blob) : null;
    state.decodedSource = null;
    $("result-body").hidden = false;
    $("result-empty").hidden = true;
    $("result-prompt").textContent = entry.prompt;
    const player = $("player");
    player.src = state.shownUrl;
    $("ab").hidden = !entry.edit;
    setABButtons();
    const dl = $("result-facts");
    dl.replaceChildren();
    if (entry.edit) fact(dl, "Edit", editText(entry));
    fact(dl, "Seed", String(entry.seed));
    fact(dl, "Duration", `${fmt(entry.duration)} s`);
    fact(dl, "Steps · guidance", `${entry.num_inference_steps} · ${fmt(entry.guidance_scale)}`);
    if (entry.negative_prompt) fact(dl, "Negative prompt", entry.negative_prompt);
    fact(dl, "Audio", `${entry.format.toUpperCase()} · ${entry.sample_rate} Hz · ${entry.channels} ch`);
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
    a.href = state.shownUrl;
    a.download = filename(entry);
    a.textContent = `Download ${a.download}`;
    for (const id of ["waveform", "spectrogram"]) delete $(id).dataset.drawn;
    try {
      const audio = await decodeBlob(entry.blob, entry.sample_rate);
      const channels = channelsOf(audio);
      state.decoded = { channels, mono: monoOf(channels), sampleRate: audio.sampleRate };
    } catch (err) {
      state.decoded = null;
      for (const id of ["waveform", "spectrogram"]) clearCanvas($(id));
      $("spectrogram").setAttribute("aria-label", `No picture: this browser cannot decode ${entry.format}`);
    }
    if (entry.edit) {
      try {
        const audio = await decodeBlob(entry.edit.source.blob, entry.sample_rate);
        const channels = channelsOf(audio);
        if (state.shown === entry) state.decodedSource = { channels, mono: monoOf(channels), sampleRate: audio.sampleRate };
      } catch {
        /* the source was read once already; without a picture the A/B still plays */
      }
    }
    drawResult();
  }

  function setABButtons() {
    $("ab-after").setAttribute("aria-pressed", String(state.ab === "after"));
    $("ab-before").setAttribute("aria-pressed", String(state.ab === "before"));
    document.body.dataset.ab = state.ab;
  }

  // A/B: the same player switches between the result and its source, at the same position, still playing
  // if it was.
  function setAB(which) {
    if (!state.shown || !state.shown.edit) return;
    state.ab = which;
    setABButtons();
    const player = $("player");
    const url = which === "before" ? state.shownSourceUrl : state.shownUrl;
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

  // ---------------------------------------------------------------- pictures --
  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function sizeCanvas(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(100, Math.round(canvas.clientWidth * dpr));
    const h = Math.max(40, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== w) canvas.width = w;
    if (canvas.height !== h) canvas.height = h;
    return { w, h, dpr };
  }

  function clearCanvas(canvas) {
    const { w, h } = sizeCanvas(canvas);
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, w, h);
  }

  function drawAll() {
    drawResult();
    drawSource();
  }

  // The result panel shows the clip (After) or its source (Before), with what was regenerated marked.
  function drawResult() {
    const before = state.ab === "before" && state.decodedSource;
    const decoded = before ? state.decodedSource : state.decoded;
    if (!decoded) return;
    const entry = state.shown;
    const zones = entry && entry.edit ? resultZones(entry) : [];
    const own = decoded.channels[0].length / decoded.sampleRate;
    const view = entry && entry.edit ? Math.max(own, entry.duration) : own;
    drawWaveform($("waveform"), decoded, { view, zones });
    drawSpectrogram($("spectrogram"), decoded);
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

  // zones: [{from, to, kind: "mark" | "new" | "cut", label}] in seconds; view: the seconds the width spans.
  function drawZones(g, zones, view, w, h, dpr, under) {
    for (const z of zones) {
      const x0 = Math.round((z.from / view) * w);
      const x1 = Math.max(x0 + 1, Math.round((z.to / view) * w));
      if (under) {
        g.fillStyle = cssVar(z.kind === "cut" ? "--cut" : "--mark-bg");
        g.fillRect(x0, 0, x1 - x0, h);
      } else {
        if (z.kind !== "cut") {
          g.fillStyle = cssVar("--mark");
          g.fillRect(x0, 0, x1 - x0, Math.round(5 * dpr)); // a strip along the top marks the span
          g.fillRect(x0, 0, Math.max(1, Math.round(dpr)), h);
          g.fillRect(x1 - Math.max(1, Math.round(dpr)), 0, Math.max(1, Math.round(dpr)), h);
        }
        if (z.label && x1 - x0 > 60 * dpr) {
          g.fillStyle = cssVar("--text-muted");
          g.font = `${11 * dpr}px system-ui, sans-serif`;
          g.textAlign = "left";
          g.textBaseline = "top";
          g.fillText(z.label, x0 + 4 * dpr, 7 * dpr);
        }
      }
    }
  }

  function drawWaveform(canvas, { channels, sampleRate }, { view, zones = [] } = {}) {
    const { w, h, dpr } = sizeCanvas(canvas);
    const g = canvas.getContext("2d");
    g.fillStyle = cssVar("--plot-bg");
    g.fillRect(0, 0, w, h);
    const n = channels[0].length;
    const span = view || n / sampleRate;
    const perPx = (span * sampleRate) / w; // samples per pixel column
    drawZones(g, zones, span, w, h, dpr, true);
    const lanes = channels.length;
    const laneH = h / lanes;
    g.fillStyle = cssVar("--wave");
    for (let c = 0; c < lanes; c++) {
      const data = channels[c];
      const mid = laneH * c + laneH / 2;
      for (let x = 0; x < w; x++) {
        const a = Math.floor(x * perPx);
        if (a >= n) break;
        const b = Math.max(a + 1, Math.floor((x + 1) * perPx));
        let lo = 1;
        let hi = -1;
        for (let i = a; i < b && i < n; i++) {
          const v = data[i];
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
        if (hi < lo) continue;
        const y0 = mid - hi * (laneH / 2 - 1);
        const y1 = mid - lo * (laneH / 2 - 1);
        g.fillRect(x, y0, 1, Math.max(1, y1 - y0));
      }
      g.fillStyle = cssVar("--axis");
      g.fillRect(0, Math.round(mid), w, Math.max(1, Math.round(dpr / 2)));
      g.fillStyle = cssVar("--wave");
    }
    drawZones(g, zones, span, w, h, dpr, false);
    canvas.dataset.drawn = "1";
  }

  function fft(re, im) {
    const n = re.length;
    for (let i = 1, j = 0; i < n; i++) {
      let bit = n >> 1;
      for (; j & bit; bit >>= 1) j ^= bit;
      j ^= bit;
      if (i < j) {
        [re[i], re[j]] = [re[j], re[i]];
        [im[i], im[j]] = [im[j], im[i]];
      }
    }
    for (let len = 2; len <= n; len <<= 1) {
      const ang = (-2 * Math.PI) / len;
      const wr = Math.cos(ang);
      const wi = Math.sin(ang);
      for (let i = 0; i < n; i += len) {
        let cr = 1;
        let ci = 0;
        for (let k = 0; k < len / 2; k++) {
          const a = i + k;
          const b = a + len / 2;
          const tr = re[b] * cr - im[b] * ci;
          const ti = re[b] * ci + im[b] * cr;
          re[b] = re[a] - tr;
          im[b] = im[a] - ti;
          re[a] += tr;
          im[a] += ti;
          const nr = cr * wr - ci * wi;
          ci = cr * wi + ci * wr;
          cr = nr;
        }
      }
    }
  }

  // A perceptual dark-to-bright colour ramp (close to "magma").
  const RAMP = [
    [0, 0, 4],
    [28, 16, 68],
    [79, 18, 123],
    [129, 37, 129],
    [181, 54, 122],
    [229, 80, 100],
    [251, 135, 97],
    [254, 194, 135],
    [252, 253, 191],
  ];
  const LUT = (() => {
    const lut = new Uint8ClampedArray(256 * 3);
    for (let i = 0; i < 256; i++) {
      const t = (i / 255) * (RAMP.length - 1);
      const k = Math.min(RAMP.length - 2, Math.floor(t));
      const f = t - k;
      for (let c = 0; c < 3; c++) lut[i * 3 + c] = RAMP[k][c] + (RAMP[k + 1][c] - RAMP[k][c]) * f;
    }
    return lut;
  })();

  function niceStep(span, maxTicks) {
    const raw = span / Math.max(1, maxTicks);
    for (const s of [0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60]) if (s >= raw) return s;
    return 60;
  }

  function drawSpectrogram(canvas, { mono, sampleRate }) {
    const { w, h, dpr } = sizeCanvas(canvas);
    const g = canvas.getContext("2d");
    const font = 11 * dpr;
    const left = Math.round(40 * dpr);
    const bottom = Math.round(20 * dpr);
    const top = Math.round(4 * dpr);
    const right = Math.round(8 * dpr);
    const pw = Math.max(10, w - left - right);
    const ph = Math.max(10, h - top - bottom);
    g.fillStyle = cssVar("--panel");
    g.fillRect(0, 0, w, h);

    const N = sampleRate >= 32000 ? 2048 : 1024;
    const half = N / 2;
    const win = new Float32Array(N);
    for (let i = 0; i < N; i++) win[i] = 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / (N - 1));
    const binHz = sampleRate / N;
    const fMin = Math.max(20, binHz);
    const fMax = sampleRate / 2;
    // For each pixel row (top = high), the fractional FFT bin of its log-spaced frequency.
    const rowBin = new Float32Array(ph);
    for (let y = 0; y < ph; y++) {
      const f = fMin * Math.pow(fMax / fMin, 1 - y / Math.max(1, ph - 1));
      rowBin[y] = Math.min(half - 1, f / binHz);
    }
    const cols = pw;
    const db = new Float32Array(cols * ph);
    const re = new Float32Array(N);
    const im = new Float32Array(N);
    const power = new Float32Array(half);
    const n = mono.length;
    let peak = -Infinity;
    let dc = 0; // a constant offset would smear over the low rows; it is not sound
    for (let i = 0; i < n; i++) dc += mono[i];
    dc /= Math.max(1, n);
    for (let x = 0; x < cols; x++) {
      const center = Math.round(((x + 0.5) / cols) * n);
      // Frames stay inside the clip (no zero-padded edges, which would show as clicks).
      const start = n > N ? Math.min(n - N, Math.max(0, center - half)) : center - half;
      for (let i = 0; i < N; i++) {
        const s = start + i;
        re[i] = s >= 0 && s < n ? (mono[s] - dc) * win[i] : 0;
        im[i] = 0;
      }
      fft(re, im);
      for (let k = 0; k < half; k++) power[k] = re[k] * re[k] + im[k] * im[k];
      for (let y = 0; y < ph; y++) {
        const b = rowBin[y];
        const k = Math.floor(b);
        const f = b - k;
        const p = power[k] * (1 - f) + power[Math.min(half - 1, k + 1)] * f;
        const v = 10 * Math.log10(p + 1e-12);
        db[y * cols + x] = v;
        if (v > peak) peak = v;
      }
    }
    const range = 80;
    const img = g.createImageData(cols, ph);
    for (let i = 0; i < cols * ph; i++) {
      const t = Math.max(0, Math.min(1, (db[i] - (peak - range)) / range));
      const c = Math.round(t * 255) * 3;
      img.data[i * 4] = LUT[c];
      img.data[i * 4 + 1] = LUT[c + 1];
      img.data[i * 4 + 2] = LUT[c + 2];
      img.data[i * 4 + 3] = 255;
    }
    g.putImageData(img, left, top);

    // Axes: frequency (log) on the left, time along the bottom.
    g.fillStyle = cssVar("--text-muted");
    g.strokeStyle = cssVar("--axis");
    g.lineWidth = Math.max(1, dpr);
    g.font = `${font}px system-ui, sans-serif`;
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (const f of [50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000]) {
      if (f < fMin || f > fMax) continue;
      const y = top + (1 - Math.log(f / fMin) / Math.log(fMax / fMin)) * (ph - 1);
      g.fillText(f >= 1000 ? `${f / 1000}k` : String(f), left - 6 * dpr, y);
      g.beginPath();
      g.moveTo(left - 4 * dpr, y);
      g.lineTo(left, y);
      g.stroke();
    }
    const seconds = n / sampleRate;
    const step = niceStep(seconds, Math.floor(pw / (48 * dpr)));
    g.textAlign = "center";
    g.textBaseline = "top";
    for (let t = 0; t <= seconds + 1e-9; t += step) {
      const x = left + (t / seconds) * pw;
      g.beginPath();
      g.moveTo(x, top + ph);
      g.lineTo(x, top + ph + 4 * dpr);
      g.stroke();
      const label = Number(t.toFixed(2)) + (t === 0 ? " s" : "");
      g.textAlign = x + 20 * dpr > w ? "right" : t === 0 ? "left" : "center";
      g.fillText(label, x, top + ph + 6 * dpr);
    }
    g.textAlign = "left";
    g.textBaseline = "top";
    g.fillText("Hz", 2 * dpr, top + ph + 6 * dpr); // the unit of the left axis, under it
    canvas.dataset.drawn = "1";
  }

  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawAll, 150);
  });

  // ---------------------------------------------------------------- modes --
  function setMode(mode) {
    const previous = state.mode;
    state.mode = mode;
    for (const radio of document.querySelectorAll('input[name="mode"]')) radio.checked = radio.value === mode;
    const editing = mode !== "text";
    $("source").hidden = !editing;
    $("strength-box").hidden = mode !== "a2a" || !(state.caps && state.caps.noise);
    $("regions-box").hidden = mode !== "inpaint";
    $("region-layer").classList.toggle("editable", mode === "inpaint");
    document.body.dataset.mode = mode;
    if (previous === "text" && editing) state.textDuration = $("duration").value;
    if (editing && previous !== mode) sourceDuration();
    if (!editing && previous !== "text" && state.textDuration !== null) $("duration").value = state.textDuration;
    durationHint();
    drawSource();
  }

  function durationBounds() {
    const f = state.models.fields.duration;
    const max = Math.min(f.maximum, state.caps ? state.caps.maxDuration : f.maximum);
    return { min: f.minimum, max };
  }

  // Editing starts from the source's length, within the model's limits (floored to 1 ms: a duration a
  // hair longer than the source would ask for a continuation nobody wanted).
  function sourceDuration() {
    if (!state.source || !state.models) return;
    const { min, max } = durationBounds();
    const d = Math.min(max, Math.max(min, Math.floor(state.source.seconds * 1000) / 1000));
    $("duration").value = d;
  }

  function outputSeconds() {
    const v = Number($("duration").value);
    if ($("duration").value.trim() !== "" && Number.isFinite(v) && v > 0) return v;
    return state.models ? state.models.fields.duration.default : 0;
  }

  function durationHint() {
    if (!state.models) return;
    const f = state.models.fields.duration;
    let text = `${fmt(f.minimum)}–${fmt(f.maximum)} s, default ${fmt(f.default)}`;
    if (state.mode !== "text" && state.source) {
      text = `${fmt(f.minimum)}–${fmt(durationBounds().max)} s · source ${state.source.seconds.toFixed(2)} s`;
      if (state.mode === "inpaint" && state.caps.continuation) text += "; longer continues it";
      if (state.mode === "a2a") text += "; longer pads it with silence";
    }
    $("duration-hint").textContent = text;
    const note = $("continuation-note");
    if (state.mode === "inpaint" && state.source) {
      const d = outputSeconds();
      const s = state.source.seconds;
      if (d > s + 1e-3 && state.caps.continuation) {
        note.textContent = `Continuation: ${(d - s).toFixed(2)} s after the source's end (${s.toFixed(2)} s) will be generated.`;
      } else if (state.caps.continuation) {
        note.textContent = `Continuation: set Duration longer than the source (${s.toFixed(2)} s) to generate a new tail.`;
      } else {
        note.textContent = "";
      }
      if (d < s - 1e-3) note.textContent += ` The output is ${fmt(d)} s: the source after that is cut.`;
    } else {
      note.textContent = "";
    }
  }

  // ---------------------------------------------------------------- the source --
  function showSourceError(message) {
    const box = $("source-error");
    box.textContent = message;
    box.hidden = !message;
  }

  async function sniffFormat(blob) {
    const b = new Uint8Array(await blob.slice(0, 12).arrayBuffer());
    const text = String.fromCharCode(...b);
    if (text.startsWith("RIFF") && text.slice(8, 12) === "WAVE") return "wav";
    if (text.startsWith("fLaC")) return "flac";
    if (text.startsWith("OggS")) return "ogg";
    if (text.startsWith("ID3") || (b[0] === 0xff && (b[1] & 0xe0) === 0xe0)) return "mp3";
    return null;
  }

  function decodeBlob(blob, sampleRate) {
    return blob.arrayBuffer().then((buf) => new OfflineAudioContext(1, 1, sampleRate).decodeAudioData(buf));
  }

  function channelsOf(audio) {
    const channels = [];
    for (let c = 0; c < audio.numberOfChannels; c++) channels.push(audio.getChannelData(c));
    return channels;
  }

  function monoOf(channels) {
    const mono = new Float32Array(channels[0].length);
    for (const ch of channels) for (let i = 0; i < ch.length; i++) mono[i] += ch[i] / channels.length;
    return mono;
  }

  // 16-bit PCM WAV. x * 32768 (clamped) returns a 16-bit source's samples exactly.
  function encodeWav(channels, sampleRate, frames) {
    const n = Math.min(frames ?? channels[0].length, channels[0].length);
    const ch = channels.length;
    const buf = new ArrayBuffer(44 + n * ch * 2);
    const v = new DataView(buf);
    const ascii = (at, text) => [...text].forEach((c, i) => v.setUint8(at + i, c.charCodeAt(0)));
    ascii(0, "RIFF");
    v.setUint32(4, 36 + n * ch * 2, true);
    ascii(8, "WAVE");
    ascii(12, "fmt ");
    v.setUint32(16, 16, true);
    v.setUint16(20, 1, true);
    v.setUint16(22, ch, true);
    v.setUint32(24, sampleRate, true);
    v.setUint32(28, sampleRate * ch * 2, true);
    v.setUint16(32, ch * 2, true);
    v.setUint16(34, 16, true);
    ascii(36, "data");
    v.setUint32(40, n * ch * 2, true);
    let at = 44;
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < ch; c++) {
        v.setInt16(at, Math.max(-32768, Math.min(32767, Math.round(channels[c][i] * 32768))), true);
        at += 2;
      }
    }
    return new Blob([buf], { type: "audio/wav" });
  }

  function tooLarge(name, bytes, what) {
    return (
      `${name}${what} is ${bytesText(bytes)}; the service takes sources up to ${bytesText(state.caps.maxBytes)}. ` +
      "Use a shorter clip, or FLAC, OGG or MP3, which are smaller."
    );
  }

  // Every source (file, recording, result) comes through here: checked against the service's limits
  // before anything is sent, decoded once for the pictures, and kept as the exact bytes to send.
  async function setSource(blob, { name, origin = "file", maxSeconds = null } = {}) {
    if (!state.models) return false;
    const seq = ++state.sourceSeq;
    const caps = state.caps;
    showSourceError("");
    $("source-facts").textContent = `Reading ${name}…`;
    const fail = (message) => {
      if (seq !== state.sourceSeq) return false;
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
    if (seq !== state.sourceSeq) return false;
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
    if (state.sourceUrl) URL.revokeObjectURL(state.sourceUrl);
    state.sourceUrl = URL.createObjectURL(sendBlob);
    $("source-player").src = state.sourceUrl;
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
    if (state.sourceUrl) URL.revokeObjectURL(state.sourceUrl);
    state.sourceUrl = null;
    $("source-player").removeAttribute("src");
    $("source-body").hidden = true;
    $("source-facts").textContent = "";
    renderRegions();
    durationHint();
  }

  // The file's bytes as base64, read once per source (FileReader encodes natively; no JS copy loop)
  // and reused by every request made from it.
  function sourceBase64(source) {
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
  function bodyWithAudio(body, field, b64) {
    const head = JSON.stringify(body);
    return `${head.slice(0, -1)}${head.length > 2 ? "," : ""}"${field}":"` + b64 + '"}';
  }

  function pickFile(file) {
    if (!file) return;
    if (state.mode === "text") setMode(state.caps.audioToAudio ? "a2a" : "inpaint");
    setSource(file, { name: file.name || "dropped audio", origin: "file" });
  }

  function useAsSource(entry) {
    if (state.mode === "text") setMode(state.caps.audioToAudio ? "a2a" : "inpaint");
    const name = `“${entry.prompt}” (seed ${entry.seed})`;
    setSource(entry.blob, { name, origin: "result" }).then((ok) => {
      if (ok) $("source").scrollIntoView({ behavior: "smooth", block: "start" });
    });
  }

  // ---------------------------------------------------------------- recording --
  function recordLimit() {
    const caps = state.caps;
    let limit = caps.maxDuration;
    if (caps.maxSeconds) limit = Math.min(limit, caps.maxSeconds);
    if (caps.maxBytes) limit = Math.min(limit, (caps.maxBytes - 44) / (state.models.sample_rate * 2 * 2));
    return Math.max(1, Math.floor(limit * 10) / 10);
  }

  async function toggleRecording() {
    if (state.recorder) {
      state.recorder.stop();
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
      state.recorder = null;
      button.textContent = "Record from the microphone";
      button.setAttribute("aria-pressed", "false");
      $("record-status").textContent = "";
      const blob = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
      const when = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
      await setSource(blob, { name: `Recording ${when}`, origin: "recording", maxSeconds: limit });
    };
    recorder.start(250);
    state.recorder = recorder;
    button.textContent = "Stop recording";
    button.setAttribute("aria-pressed", "true");
  }

  // ---------------------------------------------------------------- regions --
  function viewSeconds() {
    if (!state.source) return 1;
    if (state.mode === "text") return state.source.seconds;
    return Math.max(state.source.seconds, outputSeconds());
  }

  const round2 = (t) => Math.round(t * 100) / 100;

  function showRegionsError(message) {
    $("regions-error").textContent = message;
    $("regions-error").hidden = !message;
  }

  function regionText(r) {
    return `${r.start.toFixed(2)}–${r.end.toFixed(2)} s`;
  }

  function renderRegions() {
    renderRegionOverlay();
    const ol = $("regions");
    ol.replaceChildren(
      ...state.regions.map((r, i) => {
        const li = document.createElement("li");
        const title = document.createElement("span");
        title.className = "region-name";
        title.textContent = `Region ${i + 1}`;
        const field = (key, word) => {
          const label = document.createElement("label");
          const hidden = document.createElement("span");
          hidden.className = "visually-hidden";
          hidden.textContent = `Region ${i + 1} `;
          const input = document.createElement("input");
          input.type = "number";
          input.step = "0.01";
          input.min = "0";
          input.inputMode = "decimal";
          input.value = r[key].toFixed(2);
          input.dataset.i = String(i);
          input.dataset.key = key;
          input.addEventListener("input", () => editRegion(input));
          input.addEventListener("change", () => editRegion(input, true));
          label.append(hidden, `${word} (s)`, input);
          return label;
        };
        const length = document.createElement("span");
        length.className = "hint region-length";
        length.textContent = `${(r.end - r.start).toFixed(2)} s`;
        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "secondary small";
        remove.textContent = "Remove";
        remove.setAttribute("aria-label", `Remove region ${i + 1} (${regionText(r)})`);
        remove.addEventListener("click", () => removeRegion(i));
        li.append(title, field("start", "start"), field("end", "end"), length, remove);
        return li;
      }),
    );
    $("region-clear").hidden = state.regions.length === 0;
    $("region-add").disabled = !state.source || state.regions.length >= MAX_REGIONS;
  }

  // The shaded spans over the waveform; positions in % so they follow any resize.
  function renderRegionOverlay() {
    const layer = $("region-layer");
    for (const el of layer.querySelectorAll(".region")) el.remove();
    const view = viewSeconds();
    state.regions.forEach((r, i) => {
      const el = document.createElement("div");
      el.className = "region";
      el.dataset.i = String(i);
      el.style.left = `${(r.start / view) * 100}%`;
      el.style.width = `${((r.end - r.start) / view) * 100}%`;
      const label = document.createElement("span");
      label.className = "region-label";
      label.textContent = `${i + 1}: ${regionText(r)}`;
      const x = document.createElement("span");
      x.className = "region-x";
      x.textContent = "×";
      x.title = "Remove this region";
      const left = document.createElement("span");
      left.className = "edge";
      left.dataset.edge = "start";
      const right = document.createElement("span");
      right.className = "edge";
      right.dataset.edge = "end";
      el.append(left, label, x, right);
      layer.append(el);
    });
    // keep the list's numbers in step while dragging (without rebuilding inputs a person types in)
    for (const input of $("regions").querySelectorAll("input")) {
      const r = state.regions[Number(input.dataset.i)];
      if (r && document.activeElement !== input) input.value = r[input.dataset.key].toFixed(2);
    }
    $("regions").querySelectorAll(".region-length").forEach((el, i) => {
      const r = state.regions[i];
      if (r) el.textContent = `${(r.end - r.start).toFixed(2)} s`;
    });
  }

  function editRegion(input, commit = false) {
    const i = Number(input.dataset.i);
    const r = state.regions[i];
    if (!r) return;
    const v = Number(input.value);
    const other = input.dataset.key === "start" ? r.end : r.start;
    const view = viewSeconds();
    let problem = "";
    if (input.value.trim() === "" || !Number.isFinite(v)) problem = "not a number";
    else if (v < 0) problem = "must be 0 or more";
    else if (input.dataset.key === "start" && v >= other) problem = `must be before the end (${other.toFixed(2)} s)`;
    else if (input.dataset.key === "end" && v <= other) problem = `must be after the start (${other.toFixed(2)} s)`;
    else if (v > view + 1e-9) problem = `must be within the clip (${view.toFixed(2)} s)`;
    if (problem) {
      input.setAttribute("aria-invalid", "true");
      showRegionsError(`Region ${i + 1} ${input.dataset.key}: ${problem}`);
      if (commit) input.value = r[input.dataset.key].toFixed(2);
      return;
    }
    input.removeAttribute("aria-invalid");
    showRegionsError("");
    r[input.dataset.key] = v;
    renderRegionOverlay();
  }

  function removeRegion(i) {
    state.regions.splice(i, 1);
    showRegionsError("");
    renderRegions();
  }

  function addRegion() {
    if (!state.source) return;
    if (state.regions.length >= MAX_REGIONS) {
      showRegionsError(`At most ${MAX_REGIONS} regions.`);
      return;
    }
    const view = viewSeconds();
    const len = Math.max(MIN_REGION_S, round2(view / 5));
    // the first free stretch, scanning from the middle
    let start = round2(view / 2 - len / 2);
    const sorted = [...state.regions].sort((a, b) => a.start - b.start);
    for (const r of sorted) if (start < r.end && start + len > r.start) start = round2(r.end);
    if (start + len > view) start = Math.max(0, round2(view - len));
    state.regions.push({ start, end: round2(Math.min(view, start + len)) });
    renderRegions();
    const inputs = $("regions").querySelectorAll("input");
    if (inputs.length) inputs[inputs.length - 2].focus();
  }

  function layerTime(e) {
    const rect = $("region-layer").getBoundingClientRect();
    const view = viewSeconds();
    return Math.max(0, Math.min(view, ((e.clientX - rect.left) / Math.max(1, rect.width)) * view));
  }

  function onLayerDown(e) {
    if (!state.source || e.button !== 0) return;
    const t = layerTime(e);
    const layer = $("region-layer");
    if (state.mode !== "inpaint") {
      seekSource(t);
      return;
    }
    const el = e.target.closest(".region");
    let drag;
    if (el) {
      const i = Number(el.dataset.i);
      if (e.target.classList.contains("region-x")) {
        e.preventDefault();
        removeRegion(i);
        return;
      }
      const r = state.regions[i];
      if (e.target.classList.contains("edge")) drag = { kind: e.target.dataset.edge, i };
      else drag = { kind: "move", i, offset: t - r.start, len: round2(r.end - r.start) };
    } else {
      if (state.regions.length >= MAX_REGIONS) {
        showRegionsError(`At most ${MAX_REGIONS} regions; remove one first.`);
        seekSource(t);
        return;
      }
      const start = round2(t);
      state.regions.push({ start, end: start });
      drag = { kind: "create", i: state.regions.length - 1, anchor: start, x0: e.clientX };
    }
    e.preventDefault();
    layer.setPointerCapture(e.pointerId);
    state.drag = drag;
    showRegionsError("");
    layer.classList.add("dragging");
  }

  function onLayerMove(e) {
    const d = state.drag;
    if (!d) return;
    const view = viewSeconds();
    const t = round2(layerTime(e));
    const r = state.regions[d.i];
    if (d.kind === "create") {
      r.start = Math.min(d.anchor, t);
      r.end = Math.max(d.anchor, t);
    } else if (d.kind === "start") {
      r.start = Math.max(0, Math.min(t, round2(r.end - MIN_REGION_S)));
    } else if (d.kind === "end") {
      r.end = Math.min(view, Math.max(t, round2(r.start + MIN_REGION_S)));
    } else {
      r.start = round2(Math.max(0, Math.min(view - d.len, layerTime(e) - d.offset)));
      r.end = round2(r.start + d.len);
    }
    if (d.kind === "create" && state.regions.length !== $("regions").children.length) renderRegions();
    else renderRegionOverlay();
  }

  function onLayerUp(e) {
    const d = state.drag;
    if (!d) return;
    state.drag = null;
    $("region-layer").classList.remove("dragging");
    const r = state.regions[d.i];
    if (d.kind === "create" && (Math.abs(e.clientX - d.x0) < 4 || r.end - r.start < MIN_REGION_S)) {
      state.regions.splice(d.i, 1); // a click, not a drag: move the playhead instead
      seekSource(d.anchor);
    }
    state.regions.sort((a, b) => a.start - b.start);
    renderRegions();
  }

  function seekSource(t) {
    const player = $("source-player");
    if (player.readyState >= 1) player.currentTime = t;
    movePlayhead();
  }

  let playheadFrame = 0;
  function movePlayhead() {
    const player = $("source-player");
    if (!state.source) return;
    $("playhead").style.left = `${(Math.min(player.currentTime || 0, viewSeconds()) / viewSeconds()) * 100}%`;
    cancelAnimationFrame(playheadFrame); // one animation loop, however many events asked for one
    playheadFrame = player.paused ? 0 : requestAnimationFrame(movePlayhead);
  }

  // The source's pictures, on the output's timeline: what the request will do to each stretch is shaded.
  function sourceZones() {
    const s = state.source;
    const zones = [];
    if (!s || state.mode === "text") return zones;
    const d = outputSeconds();
    if (d > s.seconds + 1e-3) {
      if (state.mode === "inpaint") zones.push({ from: s.seconds, to: d, kind: "new", label: "new (continuation)" });
      else zones.push({ from: s.seconds, to: d, kind: "cut", label: "silence (padded)" });
    } else if (d < s.seconds - 1e-3) {
      zones.push({ from: d, to: s.seconds, kind: "cut", label: "not used (after Duration)" });
    }
    return zones;
  }

  function drawSource({ spectrogram = true } = {}) {
    if (!state.source || $("source").hidden) return;
    const view = viewSeconds();
    drawWaveform($("source-waveform"), state.source.decoded, { view, zones: sourceZones() });
    if (spectrogram) drawSpectrogram($("source-spectrogram"), state.source.decoded);
    renderRegionOverlay();
    movePlayhead();
    const caption = $("source-wave-caption");
    caption.textContent =
      state.mode === "inpaint"
        ? `Timeline 0–${view.toFixed(2)} s (the output's). Shaded spans are regenerated.`
        : state.mode === "a2a"
          ? "The whole clip is redrawn from the source; click to move the playhead."
          : "";
  }

  // ---------------------------------------------------------------- history --
  const saved = (() => {
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
      for (const [id, url] of state.historyUrls) {
        if (!keep.has(id)) {
          URL.revokeObjectURL(url);
          state.historyUrls.delete(id);
        }
      }
      const ol = $("history");
      ol.replaceChildren(...items.map(item));
      $("history-empty").hidden = items.length > 0;
      $("history-clear").hidden = items.length === 0;
    }

    function button(text, label, onClick) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "secondary small";
      b.textContent = text;
      b.setAttribute("aria-label", label);
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
        `seed ${e.seed} · ${e.format} · ${when}`;
      const url = state.historyUrls.get(e.id) || URL.createObjectURL(e.blob);
      state.historyUrls.set(e.id, url);
      const audio = document.createElement("audio");
      audio.controls = true;
      audio.preload = "metadata";
      audio.src = url;
      audio.setAttribute("aria-label", `Play: ${e.prompt}`);
      const actions = document.createElement("div");
      actions.className = "row wrap";
      actions.append(
        button("Show", `Show "${e.prompt}" with its pictures`, async () => {
          await showResult(e);
          $("result").scrollIntoView({ behavior: "smooth", block: "start" });
          $("player").focus();
        }),
        button("Reuse settings", `Put the settings of "${e.prompt}" into the form`, () => reuse(e)),
      );
      if (!$("use-result").hidden) {
        actions.append(button("Edit", `Use "${e.prompt}" as the source for editing`, () => useAsSource(e)));
      }
      actions.append(button("Delete", `Delete "${e.prompt}" from history`, () => remove(e.id)));
      li.append(title, meta, audio, actions);
      return li;
    }

    return { add, render, clear };
  })();

  function reuse(e) {
    $("prompt").value = e.prompt;
    $("negative_prompt").value = e.negative_prompt || "";
    $("duration").value = e.duration;
    $("num_inference_steps").value = e.num_inference_steps;
    $("guidance_scale").value = e.guidance_scale;
    $("seed").value = e.seed;
    $("format").value = e.format;
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
    $("prompt").focus();
  }

  // ---------------------------------------------------------------- wiring --
  function saveToken() {
    const t = token();
    const remember = $("token-remember").checked;
    try {
      sessionStorage.removeItem(TOKEN_KEY);
      localStorage.removeItem(TOKEN_KEY);
      if (t) (remember ? localStorage : sessionStorage).setItem(TOKEN_KEY, t);
    } catch {
      /* storage may be off; the field still works for this page */
    }
  }

  function wireEditing() {
    for (const radio of document.querySelectorAll('input[name="mode"]')) {
      radio.addEventListener("change", () => radio.checked && setMode(radio.value));
    }
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
    $("record").addEventListener("click", toggleRecording);
    $("strength").addEventListener("input", () => {
      $("strength").dataset.touched = "1";
      showStrength();
    });
    $("duration").addEventListener("input", () => {
      if (state.mode === "text") return;
      durationHint();
      drawSource({ spectrogram: false }); // only the timeline changed
    });
    const layer = $("region-layer");
    layer.addEventListener("pointerdown", onLayerDown);
    layer.addEventListener("pointermove", onLayerMove);
    layer.addEventListener("pointerup", onLayerUp);
    layer.addEventListener("pointercancel", onLayerUp);
    $("region-add").addEventListener("click", addRegion);
    $("region-clear").addEventListener("click", () => {
      state.regions = [];
      showRegionsError("");
      renderRegions();
    });
    const sp = $("source-player");
    for (const ev of ["play", "seeked", "timeupdate"]) sp.addEventListener(ev, movePlayhead);
    $("ab-after").addEventListener("click", () => setAB("after"));
    $("ab-before").addEventListener("click", () => setAB("before"));
    $("use-result").addEventListener("click", () => state.shown && useAsSource(state.shown));
  }

  function init() {
    try {
      const savedToken = localStorage.getItem(TOKEN_KEY) || sessionStorage.getItem(TOKEN_KEY);
      if (savedToken) {
        $("token").value = savedToken;
        $("token-remember").checked = !!localStorage.getItem(TOKEN_KEY);
      }
    } catch {
      /* no storage */
    }
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
    $("token-save").addEventListener("click", () => {
      saveToken();
      $("token-note").textContent = token() ? "Token set." : "No token.";
      loadModels();
    });
    $("token").addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        $("token-save").click();
      }
    });
    $("token-remember").addEventListener("change", saveToken);
    $("history-clear").addEventListener("click", () => saved.clear());
    $("lora-add").addEventListener("click", () => loras.add());
    wireEditing();
    saved.render();
    loadModels();
  }

  init();
})();
