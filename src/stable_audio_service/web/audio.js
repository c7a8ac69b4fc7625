// Audio in the browser: what format a file is (from its bytes), decoding it to samples, and 16-bit WAV
// encoding for what the service could not read otherwise (recordings, other formats). No DOM, no state.

export async function sniffFormat(blob) {
  const b = new Uint8Array(await blob.slice(0, 12).arrayBuffer());
  const text = String.fromCharCode(...b);
  if (text.startsWith("RIFF") && text.slice(8, 12) === "WAVE") return "wav";
  if (text.startsWith("fLaC")) return "flac";
  if (text.startsWith("OggS")) return "ogg";
  if (text.startsWith("ID3") || (b[0] === 0xff && (b[1] & 0xe0) === 0xe0)) return "mp3";
  return null;
}

export function decodeBlob(blob, sampleRate) {
  return blob.arrayBuffer().then((buf) => new OfflineAudioContext(1, 1, sampleRate).decodeAudioData(buf));
}

export function channelsOf(audio) {
  const channels = [];
  for (let c = 0; c < audio.numberOfChannels; c++) channels.push(audio.getChannelData(c));
  return channels;
}

export function monoOf(channels) {
  const mono = new Float32Array(channels[0].length);
  for (const ch of channels) for (let i = 0; i < ch.length; i++) mono[i] += ch[i] / channels.length;
  return mono;
}

// 16-bit PCM WAV. x * 32768 (clamped) returns a 16-bit source's samples exactly.
export function encodeWav(channels, sampleRate, frames) {
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
