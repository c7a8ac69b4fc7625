// The page's shared state, in one object: what the service said, the job running, the result shown, the
// mode, and the source with its regions. It is the only mutable state more than one module reads or
// writes, and the only one deliberately shared; whatever else a module keeps is its own.

export const state = {
  models: null, // GET /models
  caps: null, // what the loaded model can do (capabilities, or audio_inputs before it)
  job: null, // {id, abort: AbortController, started, cancelling}
  shown: null, // the history entry in the result panel
  take: 0, // which of its takes the result panel's pictures (and "Edit this clip") are of
  mode: "text",
  source: null, // {blob, name, format, bytes, seconds, decoded, note, b64: Promise<string>|null}
  regions: [], // [{start, end}] seconds on the output's timeline (aligned with the source)
};
