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
