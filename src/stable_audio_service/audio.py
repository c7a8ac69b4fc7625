"""Encoding generated audio to files (soundfile / libsndfile; no torchaudio)."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

FORMATS: dict[str, tuple[str, str | None]] = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "mp3": "audio/mpeg"}


def encode(audio: np.ndarray, sample_rate: int, fmt: str = "wav") -> bytes:
    """`audio` is float (channels, samples); it is clipped to [-1, 1] before integer encoding."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {sorted(FORMATS)}")
    container, subtype = FORMATS[fmt]
    data = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0).T
    buf = io.BytesIO()
    sf.write(buf, data, sample_rate, format=container, subtype=subtype)
    return buf.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Bytes of any supported file -> (float32 (channels, samples), sample_rate)."""
    samples, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples.T.copy(), int(sr)


def format_from_path(path: str) -> str | None:
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    return suffix if suffix in FORMATS else None


class UploadError(ValueError):
    """An uploaded audio file cannot be used; the message says why (for a 422)."""


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly, Kaiser-windowed FIR) along the last axis."""
    if from_rate == to_rate:
        return np.asarray(audio, dtype=np.float32)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(from_rate), int(to_rate))
    out = resample_poly(audio, int(to_rate) // g, int(from_rate) // g, axis=-1)
    return np.asarray(out, dtype=np.float32)


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
    data: bytes, sample_rate: int, channels: int, *, max_bytes: int, max_seconds: float
) -> tuple[np.ndarray, dict]:
    """An uploaded file (wav, flac, ogg or mp3; any rate and channel count) as float32
    (channels, samples) at the model's rate and channel count, plus what it was.

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
    if info.samplerate <= 0 or info.channels <= 0:
        raise UploadError("the audio file declares no sample rate or channels")
    seconds = info.frames / info.samplerate
    if seconds > max_seconds:
        raise UploadError(f"the audio is {seconds:.2f} s long; the limit is {max_seconds:g} s")
    try:
        audio, rate = decode(data)
    except Exception as exc:
        raise UploadError(f"the audio could not be decoded ({_reason(exc)})") from None
    if audio.shape[-1] == 0:
        raise UploadError("the audio holds no samples")
    if not np.isfinite(audio).all():
        raise UploadError("the audio holds non-finite samples (NaN or infinity)")
    source = {"sample_rate": rate, "channels": int(audio.shape[0]), "seconds": round(audio.shape[-1] / rate, 6)}
    audio = match_channels(audio, channels)
    audio = resample(audio, rate, sample_rate)
    return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False), source


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # libsndfile's messages start with "Error opening <_io.BytesIO object at 0x...>: ..."
    return text.split(": ", 1)[-1][:200]
