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

  const state = {
    models: null, // GET /models
    job: null, // {id, abort: AbortController, started, cancelling}
    shown: null, // the history entry in the result panel
    shownUrl: null,
    decoded: null, // {mono, peaksSource, sampleRate} of the shown clip, for redraws
    historyUrls: new Map(),
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

  async function api(path, { method = "GET", body, signal } = {}) {
    let response;
    try {
      response = await fetch(path, {
        method,
        signal,
        headers: headers(body !== undefined ? { "Content-Type": "application/json" } : undefined),
        body: body !== undefined ? JSON.stringify(body) : undefined,
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

  function clearFieldErrors() {
    for (const name of FIELDS) {
      const el = $(`${name}-error`);
      if (el) {
        el.textContent = "";
        el.hidden = true;
      }
      $(name).removeAttribute("aria-invalid");
    }
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
    $("generate").disabled = !!state.job;
    document.body.dataset.ready = "1";
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
    const job = { id: null, abort: new AbortController(), started: performance.now(), cancelling: false };
    state.job = job;
    setBusy(true);
    setProgress("Submitting…");
    let accepted;
    try {
      accepted = await api("jobs", { method: "POST", body });
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
    await onTerminal(job, last, body);
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

  async function onTerminal(job, last, body) {
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
    const bytes = Uint8Array.from(atob(r.audio_b64), (c) => c.charCodeAt(0));
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

  async function showResult(entry) {
    state.shown = entry;
    if (state.shownUrl) URL.revokeObjectURL(state.shownUrl);
    state.shownUrl = URL.createObjectURL(entry.blob);
    $("result-body").hidden = false;
    $("result-empty").hidden = true;
    $("result-prompt").textContent = entry.prompt;
    const player = $("player");
    player.src = state.shownUrl;
    const dl = $("result-facts");
    dl.replaceChildren();
    fact(dl, "Seed", String(entry.seed));
    fact(dl, "Duration", `${fmt(entry.duration)} s`);
    fact(dl, "Steps · guidance", `${entry.num_inference_steps} · ${fmt(entry.guidance_scale)}`);
    if (entry.negative_prompt) fact(dl, "Negative prompt", entry.negative_prompt);
    fact(dl, "Audio", `${entry.format.toUpperCase()} · ${entry.sample_rate} Hz · ${entry.channels} ch`);
    fact(dl, "Timings", timingsText(entry.timings));
    const a = $("download");
    a.href = state.shownUrl;
    a.download = filename(entry);
    a.textContent = `Download ${a.download}`;
    for (const id of ["waveform", "spectrogram"]) delete $(id).dataset.drawn;
    try {
      const buf = await entry.blob.arrayBuffer();
      const ctx = new OfflineAudioContext(entry.channels || 1, 1, entry.sample_rate);
      const audio = await ctx.decodeAudioData(buf);
      const channels = [];
      for (let c = 0; c < audio.numberOfChannels; c++) channels.push(audio.getChannelData(c));
      const mono = new Float32Array(audio.length);
      for (const ch of channels) for (let i = 0; i < ch.length; i++) mono[i] += ch[i] / channels.length;
      state.decoded = { channels, mono, sampleRate: audio.sampleRate };
      drawAll();
    } catch (err) {
      state.decoded = null;
      for (const id of ["waveform", "spectrogram"]) clearCanvas($(id));
      $("spectrogram").setAttribute("aria-label", `No picture: this browser cannot decode ${entry.format}`);
    }
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
    if (!state.decoded) return;
    drawWaveform($("waveform"), state.decoded);
    drawSpectrogram($("spectrogram"), state.decoded);
  }

  function drawWaveform(canvas, { channels }) {
    const { w, h, dpr } = sizeCanvas(canvas);
    const g = canvas.getContext("2d");
    g.fillStyle = cssVar("--plot-bg");
    g.fillRect(0, 0, w, h);
    const n = channels[0].length;
    const lanes = channels.length;
    const laneH = h / lanes;
    g.fillStyle = cssVar("--wave");
    for (let c = 0; c < lanes; c++) {
      const data = channels[c];
      const mid = laneH * c + laneH / 2;
      for (let x = 0; x < w; x++) {
        const a = Math.floor((x * n) / w);
        const b = Math.max(a + 1, Math.floor(((x + 1) * n) / w));
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
      for (const url of state.historyUrls.values()) URL.revokeObjectURL(url);
      state.historyUrls.clear();
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
        `${fmt(e.duration)} s · ${e.num_inference_steps} steps · guidance ${fmt(e.guidance_scale)} · ` +
        `seed ${e.seed} · ${e.format} · ${when}`;
      const url = URL.createObjectURL(e.blob);
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
        button("Delete", `Delete "${e.prompt}" from history`, () => remove(e.id)),
      );
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
    saved.render();
    loadModels();
  }

  init();
})();
