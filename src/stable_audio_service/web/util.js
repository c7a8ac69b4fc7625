// Small helpers every part of the page uses: element lookup and number formatting. No state, no DOM
// changes: a module of its own so that the others need not import each other for these.

export const $ = (id) => document.getElementById(id);

export function fmt(n) {
  return Number.isInteger(n) ? String(n) : String(Number(n.toFixed(3)));
}

export function bytesText(n) {
  const mb = n / 1e6;
  const human = mb >= 1 ? `${fmt(Number(mb.toFixed(2)))} MB` : `${fmt(Number((n / 1e3).toFixed(1)))} kB`;
  return `${human} (${n} bytes)`;
}

export const round2 = (t) => Math.round(t * 100) / 100;
