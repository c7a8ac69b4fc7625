// The service's HTTP API as the page uses it: JSON calls, file downloads and the job's Server-Sent Events,
// each with the bearer token, and errors as ApiError with the service's own words. No DOM.

import { token } from "./token.js";

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

function headers(extra) {
  const h = Object.assign({ Accept: "application/json" }, extra || {});
  if (token()) h.Authorization = `Bearer ${token()}`;
  return h;
}

// A file (the finished job's audio) as an ArrayBuffer; errors as for api().
export async function apiBytes(path) {
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

export async function api(path, { method = "GET", body, raw, signal } = {}) {
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
export async function streamEvents(jobId, signal, onEvent) {
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
