"""Encoding generated audio to files and decoding uploads (soundfile / libsndfile; no torchaudio).

Both directions work in blocks so that neither the longest clip a model allows (380 s) nor a
small upload that expands enormously can crash the process or take unbounded memory:

- libsndfile's Vorbis encoder segfaults when one `write` call carries about 2^21 frames or more
  (≈ 47.5 s at 44.1 kHz, any channel count; libsndfile 1.2.2), so `encode` feeds every codec
  `ENCODE_BLOCK_FRAMES` at a time. MP3, FLAC and WAV take 400 s in one call, but blocks also
  keep the clipped float copy small.
- `decode_upload` trusts only what it can check cheaply: the header (rate, channels, frames)
  is read first and the file is refused when it would decode to more than `max_samples`; then
  only the frames the clip can use are read, block by block, mixed down per block, and only
  that cropped part is resampled.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction

import numpy as np
import soundfile as sf

FORMATS: dict[str, tuple[str, str | None]] = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "mp3": "audio/mpeg"}

# 65536 frames (1.5 s at 44.1 kHz) per encoder call: 32x below where Vorbis crashes.
ENCODE_BLOCK_FRAMES = 1 << 16
# Samples (frames x channels) per decoder call, so a block stays ~4 MiB of float32 at any channel count.
DECODE_BLOCK_SAMPLES = 1 << 20
# Upload sample rates outside this range are refused: they are not audio anyone records, and a
# rate far from the model's would make the resampling filter huge.
MIN_UPLOAD_RATE = 1000
MAX_UPLOAD_RATE = 384_000
# Largest denominator of the resampling ratio; odd rates are approximated (relative error < 1e-6).
MAX_RATIO_DENOMINATOR = 2000
_SF_COUNT_MAX = 2**63 - 1  # what libsndfile reports when a stream does not declare its length


class EncodeError(RuntimeError):
    """Audio could not be written in the asked format; the message is safe to show a client."""


class UploadError(ValueError):
    """An uploaded audio file cannot be used; the message says why (for a 422)."""


def encode(audio: np.ndarray, sample_rate: int, fmt: str = "wav") -> bytes:
    """`audio` is float (channels, samples); it is clipped to [-1, 1] before integer encoding.

    Written in blocks of `ENCODE_BLOCK_FRAMES` (see the module docstring); any failure of the
    encoder raises `EncodeError` instead of escaping as a libsndfile error.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {sorted(FORMATS)}")
    audio = np.asarray(audio)
    if audio.ndim != 2 or audio.shape[0] < 1:
        raise EncodeError(f"audio must be (channels, samples), got shape {audio.shape}")
    channels, frames = audio.shape
    container, subtype = FORMATS[fmt]
    buf = io.BytesIO()
    try:
        with sf.SoundFile(buf, "w", int(sample_rate), channels, format=container, subtype=subtype) as out:
            for start in range(0, frames, ENCODE_BLOCK_FRAMES):
                block = np.asarray(audio[:, start : start + ENCODE_BLOCK_FRAMES], dtype=np.float32)
                if not np.isfinite(block).all():
                    raise EncodeError("the audio holds non-finite samples (NaN or infinity)")
                out.write(np.ascontiguousarray(np.clip(block, -1.0, 1.0).T))
    except EncodeError:
        raise
    except Exception as exc:  # libsndfile: unsupported rate/channels for the codec, encoder errors
        seconds = frames / sample_rate if sample_rate else 0.0
        raise EncodeError(
            f"could not encode {seconds:.1f} s of {channels}-channel audio at {sample_rate} Hz as {fmt} "
            f"({_reason(exc)})"
        ) from exc
    return buf.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Bytes of any supported file -> (float32 (channels, samples), sample_rate). For trusted data
    (our own output, tests); uploads go through `decode_upload`, which bounds what it decodes."""
    samples, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples.T.copy(), int(sr)


def format_from_path(path: str) -> str | None:
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    return suffix if suffix in FORMATS else None


def _ratio(from_rate: int, to_rate: int) -> tuple[int, int]:
    """(up, down) for polyphase resampling; exact for every common rate pair."""
    r = Fraction(int(to_rate), int(from_rate)).limit_denominator(MAX_RATIO_DENOMINATOR)
    return r.numerator, r.denominator


def resample_margin(from_rate: int, to_rate: int) -> int:
    """Source frames past the last needed one that still reach it through the resampling filter
    (scipy's resample_poly designs a filter of half-length 10 x max(up, down) in the upsampled domain)."""
    if from_rate == to_rate:
        return 0
    up, down = _ratio(from_rate, to_rate)
    return math.ceil(10 * max(up, down) / up) + 2


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly, Kaiser-windowed FIR) along the last axis,
    one channel at a time (float32 throughout) to keep the filter's temporaries to one channel's worth."""
    audio = np.asarray(audio, dtype=np.float32)
    if from_rate == to_rate:
        return audio
    from scipy.signal import resample_poly

    up, down = _ratio(from_rate, to_rate)
    if audio.ndim == 1:
        return np.asarray(resample_poly(audio, up, down), dtype=np.float32)
    rows = [np.asarray(resample_poly(row, up, down), dtype=np.float32) for row in audio]
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)


def match_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """Mono is copied to every channel; more channels than wanted are averaged down (to mono, or to
    the first `channels` after a mono mix when asked for stereo from surround)."""
    have = audio.shape[0]
    if have == channels:
        return audio
    if have == 1:
        return np.repeat(audio, channels, axis=0)
    if channels == 1:
        return audio.mean(axis=0, keepdims=True)
    if have > channels:
        # e.g. 5.1 -> stereo: keep the first `channels` (front left/right), as players do for a quick downmix
        return audio[:channels].copy()
    return np.concatenate([audio, np.repeat(audio[-1:], channels - have, axis=0)], axis=0)


def decode_upload(
    data: bytes,
    sample_rate: int,
    channels: int,
    *,
    max_bytes: int,
    max_seconds: float,
    max_samples: int | None = None,
    usable_samples: int | None = None,
) -> tuple[np.ndarray, dict]:
    """An uploaded file (wav, flac, ogg or mp3; any rate and channel count) as float32
    (channels, samples) at the model's rate and channel count, plus what it was.

    - `max_samples`: refuse a file whose header says it decodes to more than this many samples
      (frames x channels, at its own rate) before decoding anything.
    - `usable_samples`: the most samples (at `sample_rate`) the clip can use; only the source
      frames that reach them (plus the resampling filter's margin) are decoded, and the result is
      cut to this length. None: the whole file.

    Memory and time are bounded by min(file, usable part), never by what the header could claim.
    Raises `UploadError` with a reason a client can act on.
    """
    if not data:
        raise UploadError("the audio is empty")
    if len(data) > max_bytes:
        raise UploadError(f"the audio file is {len(data)} bytes; the limit is {max_bytes}")
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:  # libsndfile says "Format not recognised" and the like
        raise UploadError(f"not a readable wav, flac, ogg or mp3 file ({_reason(exc)})") from None
    rate, have, frames = int(info.samplerate), int(info.channels), int(info.frames)
    if rate <= 0 or have <= 0:
        raise UploadError("the audio file declares no sample rate or channels")
    if not MIN_UPLOAD_RATE <= rate <= MAX_UPLOAD_RATE:
        raise UploadError(f"the audio's sample rate is {rate} Hz; it must be {MIN_UPLOAD_RATE}-{MAX_UPLOAD_RATE} Hz")
    if frames >= _SF_COUNT_MAX:
        raise UploadError("the audio does not declare its length (a streamed file?); save it as a complete file")
    seconds = frames / rate
    if seconds > max_seconds:
        raise UploadError(f"the audio is {seconds:.2f} s long; the limit is {max_seconds:g} s")
    if max_samples is not None and frames * have > max_samples:
        raise UploadError(
            f"the audio would decode to {frames * have} samples ({frames} frames x {have} channels at {rate} Hz); "
            f"the limit is {max_samples} samples"
        )
    want = frames
    if usable_samples is not None:
        usable_samples = max(0, int(usable_samples))
        want = min(frames, math.ceil(usable_samples * rate / sample_rate) + resample_margin(rate, sample_rate))
    mid = min(have, channels)  # mix down per block; mono is spread to `channels` only after resampling
    try:
        source = _read_frames(data, want, have, mid)
    except UploadError:
        raise
    except Exception as exc:
        raise UploadError(f"the audio could not be decoded ({_reason(exc)})") from None
    if source.shape[-1] == 0:
        raise UploadError("the audio holds no samples")
    out = resample(source, rate, sample_rate)
    del source
    if usable_samples is not None and out.shape[-1] > usable_samples:
        out = out[:, :usable_samples]
    out = match_channels(np.clip(out, -1.0, 1.0, out=out), channels)
    described = {
        "sample_rate": rate,
        "channels": have,
        "seconds": round(seconds, 6),
        "frames": frames,
        "decoded_frames": int(min(want, frames)),
    }
    return np.ascontiguousarray(out, dtype=np.float32), described


def _read_frames(data: bytes, want: int, have: int, mid: int) -> np.ndarray:
    """Up to `want` frames, block by block, each mixed from `have` to `mid` channels at once."""
    out = np.empty((mid, want), dtype=np.float32)
    block = max(1, DECODE_BLOCK_SAMPLES // have)
    got = 0
    with sf.SoundFile(io.BytesIO(data)) as f:
        while got < want:
            chunk = f.read(min(block, want - got), dtype="float32", always_2d=True)
            n = chunk.shape[0]
            if n == 0:
                break
            if not np.isfinite(chunk).all():
                raise UploadError("the audio holds non-finite samples (NaN or infinity)")
            out[:, got : got + n] = match_channels(chunk.T, mid)
            got += n
    return out[:, :got].copy() if got < want else out  # the header over-promised: keep only what came


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # libsndfile's messages start with "Error opening <_io.BytesIO object at 0x...>: ..."
    return text.split(": ", 1)[-1][:200]
