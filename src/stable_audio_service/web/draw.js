// Pictures of audio on <canvas>: the waveform (with marked or shaded time spans) and the log-frequency
// spectrogram. Pure drawing from decoded samples; it knows nothing of the page's state.

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

export function clearCanvas(canvas) {
  const { w, h } = sizeCanvas(canvas);
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, w, h);
}

// zones: [{from, to, kind: "mark" | "new" | "cut", label}] in seconds; view: the seconds the width spans.
function drawZones(g, zones, view, w, h, dpr, under) {
  const labels = [];
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
      if (z.label && x1 - x0 >= 12 * dpr) labels.push(placeLabel(g, z.label, x0, w, dpr));
    }
  }
  return labels;
}

// A zone's label, whole and inside the canvas: from the zone's start where it fits, else pulled left from the
// canvas's right edge (a zone at the end, e.g. "not used (after Duration)", is often narrower than its words);
// only a canvas too narrow for the words gets the part before the parenthesis.
function placeLabel(g, label, x0, w, dpr) {
  g.fillStyle = cssVar("--text-muted");
  g.font = `${11 * dpr}px system-ui, sans-serif`;
  g.textAlign = "left";
  g.textBaseline = "top";
  const pad = 4 * dpr;
  let text = label;
  if (g.measureText(text).width > w - 2 * pad) text = label.replace(/\s*\(.*$/, "");
  const tw = g.measureText(text).width;
  const x = Math.max(pad, Math.min(x0 + pad, w - pad - tw));
  g.fillText(text, x, 7 * dpr);
  return { text, x0: x, x1: x + tw };
}

// The largest absolute sample of any channel.
function peakOf(channels) {
  let peak = 0;
  for (const data of channels) {
    for (let i = 0; i < data.length; i++) {
      const v = Math.abs(data[i]);
      if (v > peak) peak = v;
    }
  }
  return peak;
}

// The waveform is drawn scaled to the clip's own peak (a quiet clip is not a flat line; at most x1000, 60 dB),
// and its label says so, with the peak in dBFS.
export function drawWaveform(canvas, { channels, sampleRate }, { view, zones = [] } = {}) {
  const { w, h, dpr } = sizeCanvas(canvas);
  const g = canvas.getContext("2d");
  g.fillStyle = cssVar("--plot-bg");
  g.fillRect(0, 0, w, h);
  const n = channels[0].length;
  const span = view || n / sampleRate;
  const peak = peakOf(channels);
  const gain = peak > 0 ? Math.min(1 / peak, 1000) : 1;
  if (!canvas.dataset.label) canvas.dataset.label = canvas.getAttribute("aria-label") || "Waveform";
  const db = peak > 0 ? `peak ${(20 * Math.log10(peak)).toFixed(1)} dBFS` : "silent";
  canvas.setAttribute("aria-label", `${canvas.dataset.label}, drawn to its peak (${db})`);
  canvas.dataset.gain = String(gain);
  canvas.dataset.span = String(span);
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
      const y0 = mid - hi * gain * (laneH / 2 - 1);
      const y1 = mid - lo * gain * (laneH / 2 - 1);
      g.fillRect(x, y0, 1, Math.max(1, y1 - y0));
    }
    g.fillStyle = cssVar("--axis");
    g.fillRect(0, Math.round(mid), w, Math.max(1, Math.round(dpr / 2)));
    g.fillStyle = cssVar("--wave");
  }
  const labels = drawZones(g, zones, span, w, h, dpr, false);
  canvas.dataset.labels = JSON.stringify(labels.map((l) => ({ ...l, w })));
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

// view: the seconds the width spans, as for the waveform drawn above it (the plot takes the canvas's whole width,
// with the frequency labels inside it, so that a time has the same x in both pictures); a clip shorter than the
// view (a source before its continuation) leaves the rest empty.
export function drawSpectrogram(canvas, { mono, sampleRate }, { view } = {}) {
  const { w, h, dpr } = sizeCanvas(canvas);
  const g = canvas.getContext("2d");
  const font = 11 * dpr;
  const left = 0;
  const bottom = Math.round(20 * dpr);
  const top = Math.round(4 * dpr);
  const right = 0;
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
  const seconds = view || n / sampleRate; // the seconds the plot's width spans
  const clipCols = Math.min(cols, Math.round(((n / sampleRate) / seconds) * cols)); // columns the clip covers
  let peak = -Infinity;
  let dc = 0; // a constant offset would smear over the low rows; it is not sound
  for (let i = 0; i < n; i++) dc += mono[i];
  dc /= Math.max(1, n);
  for (let x = 0; x < clipCols; x++) {
    const center = Math.round(((x + 0.5) / cols) * seconds * sampleRate);
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
  if (clipCols > 0) {
    const img = g.createImageData(clipCols, ph);
    for (let y = 0; y < ph; y++) {
      for (let x = 0; x < clipCols; x++) {
        const i = y * clipCols + x;
        const t = Math.max(0, Math.min(1, (db[y * cols + x] - (peak - range)) / range));
        const c = Math.round(t * 255) * 3;
        img.data[i * 4] = LUT[c];
        img.data[i * 4 + 1] = LUT[c + 1];
        img.data[i * 4 + 2] = LUT[c + 2];
        img.data[i * 4 + 3] = 255;
      }
    }
    g.putImageData(img, left, top);
  }
  if (clipCols < cols) {
    g.fillStyle = cssVar("--plot-bg"); // after the clip's end: nothing to show yet
    g.fillRect(left + clipCols, top, cols - clipCols, ph);
  }
  canvas.dataset.span = String(seconds);
  canvas.dataset.clipEnd = String(clipCols / cols); // the fraction of the width the clip covers

  // Axes: frequency (log) inside the plot's left edge, on a backing so they read over any colour; time along
  // the bottom.
  g.strokeStyle = cssVar("--axis");
  g.lineWidth = Math.max(1, dpr);
  g.font = `${font}px system-ui, sans-serif`;
  g.textAlign = "left";
  g.textBaseline = "middle";
  // from the top down, each label at least a line below the one above it (a short plot keeps fewer)
  const ticks = [];
  for (const f of [20000, 10000, 5000, 2000, 1000, 500, 200, 100, 50]) {
    if (f < fMin || f > fMax) continue;
    const y = top + (1 - Math.log(f / fMin) / Math.log(fMax / fMin)) * (ph - 1);
    const ly = Math.max(top + font / 2 + dpr, Math.min(top + ph - font / 2 - dpr, y));
    if (!ticks.length || ly - ticks[ticks.length - 1].ly >= font + 4 * dpr) ticks.push({ f, y, ly });
  }
  ticks.forEach(({ f, y, ly }, k) => {
    const label = (f >= 1000 ? `${f / 1000}k` : String(f)) + (k === 0 ? " Hz" : "");
    const tw = g.measureText(label).width;
    g.fillStyle = cssVar("--panel");
    g.globalAlpha = 0.7;
    g.fillRect(5 * dpr, ly - font / 2 - dpr, tw + 4 * dpr, font + 2 * dpr);
    g.globalAlpha = 1;
    g.fillStyle = cssVar("--text-muted");
    g.fillText(label, 7 * dpr, ly);
    g.beginPath();
    g.moveTo(0, y);
    g.lineTo(4 * dpr, y);
    g.stroke();
  });
  g.fillStyle = cssVar("--text-muted");
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
  canvas.dataset.drawn = "1";
}
