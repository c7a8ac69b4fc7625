"""Long-form audio: a clip longer than the model's longest window, made inside one job as a chain of continuations.

Stability's continuation is inpainting whose mask starts at the kept length: the source is the last `overlap_s`
seconds made so far, and everything after it in a new window of `window_s` seconds is generated. So a job of
`duration` seconds runs windows `0 .. n-1`, window `k` covering `[k (W - O), k (W - O) + W)`; each window after the
first continues the previous window's last `O` seconds, and the two are joined by an equal-power crossfade over the
overlap (cos/sin gains: a constant power where the two are uncorrelated, and no dip where they agree).

Why inside the engine rather than a driver that submits one window job after another over `EngineClient`: a job
stays one job on every backend (one id, one event stream whose steps count over all windows, one cancel, one
result in the `JobStore`'s byte bounds, one owner replica on Ray), the next window starts on the worker the moment
the previous one is decoded (no queueing between windows, no 16-bit round trip of the overlap), and cancel is
checked between windows and at every step like any job's. The family only sees ordinary inpainting requests of one
window each: what it can do is its declared `Capabilities.inpainting`.

Memory is bounded by one window: the chain holds the previous window's overlap (float32) and an encoder writing
the output as it goes (in the job's format, into its result buffer); each decoded window is written and dropped.
Each window's seed is derived from the request's (`window_seed`), so the same seed makes the same long clip, and
its first window is the ordinary request of one window with that seed.
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import soundfile as sf

from .. import audio as audio_io
from ..models.base import GenerationParams

# Window k's seed: the request's plus k times the golden-ratio stride, modulo 2**32 (distinct for every window of
# any chain, and window 0 keeps the request's own seed).
SEED_STRIDE = 0x9E3779B1


def is_longform(params: GenerationParams) -> bool:
    """The request path marks a long-form request by giving it a window (its duration is then above it)."""
    return params.window_s is not None


def windows(params: GenerationParams) -> int:
    """How many windows the job runs: 1 for an ordinary request."""
    if params.window_s is None:
        return 1
    window, overlap = float(params.window_s), float(params.overlap_s or 0.0)
    return 1 + max(0, math.ceil((float(params.duration) - window) / (window - overlap) - 1e-9))


def window_seed(seed: int, index: int) -> int:
    return (int(seed) + index * SEED_STRIDE) % 2**32


def window_params(params: GenerationParams, index: int = 0, tail: np.ndarray | None = None) -> GenerationParams:
    """Window `index` of a long-form request as the family takes it: one window's duration and seed, continuing
    `tail` (the previous window's last overlap) after the first."""
    if params.window_s is None:
        return params
    return dataclasses.replace(
        params,
        duration=float(params.window_s),
        seed=window_seed(params.seed, index),
        window_s=None,
        overlap_s=None,
        num_outputs=1,
        init_audio=None,
        inpaint_audio=tail,
        inpaint_regions=[] if tail is not None else None,
    )


class Chain:
    """One long-form job's windows in progress: which window runs, what is kept of the last one, and the output
    written so far (worker thread only)."""

    def __init__(self, params: GenerationParams, sample_rate: int, channels: int, fmt: str) -> None:
        self.params = params
        self.count = windows(params)
        self.index = 0  # the window being generated
        self.sample_rate = sample_rate
        self.channels = channels
        self.format = fmt
        self.overlap = int(round(float(params.overlap_s or 0.0) * sample_rate))
        self.total = int(round(float(params.duration) * sample_rate))
        self.written = 0  # output frames written
        self.tail: np.ndarray | None = None  # the previous window's last `overlap` frames, not yet written
        # What the chain held between windows at most (float32 bytes): one overlap, however long the clip.
        self.peak_held_bytes = 0
        self._buf = io.BytesIO()
        container, subtype = audio_io.FORMATS[fmt]
        self._out: sf.SoundFile | None = sf.SoundFile(
            self._buf, "w", int(sample_rate), channels, format=container, subtype=subtype
        )

    @property
    def steps_per_window(self) -> int:
        return int(self.params.num_inference_steps)

    @property
    def total_steps(self) -> int:
        return self.count * self.steps_per_window

    @property
    def steps_done(self) -> int:
        """Steps of the windows already finished (progress counts over all windows)."""
        return self.index * self.steps_per_window

    @property
    def last(self) -> bool:
        return self.index >= self.count - 1

    def next_params(self) -> GenerationParams:
        """The parameters of the window to run now."""
        tail = None if self.tail is None else self.tail.copy()
        return window_params(self.params, self.index, tail)

    def add(self, audio: np.ndarray) -> None:
        """Window `index` decoded (float32 (channels, frames)): crossfade its head into the kept tail, write what is
        final, keep its own tail for the next window, and move on to the next window."""
        frames = audio.shape[-1]
        overlap = min(self.overlap, frames // 2)
        if self.tail is not None:
            n = min(overlap, self.tail.shape[-1])
            self._write(crossfade(self.tail[:, :n], audio[:, :n]))
            body = audio[:, n:]
        else:
            body = audio
        self.tail = None
        if self.last:
            self._write(body)
        else:
            keep = min(overlap, body.shape[-1])
            self._write(body[:, : body.shape[-1] - keep])
            self.tail = np.ascontiguousarray(body[:, body.shape[-1] - keep :], dtype=np.float32)
            self.peak_held_bytes = max(self.peak_held_bytes, self.tail.nbytes)
        self.index += 1

    def result(self) -> bytes:
        """The encoded clip (call once, after the last window)."""
        self.close()
        data, self._buf = self._buf.getvalue(), io.BytesIO()
        return data

    def close(self) -> None:
        """Finish the encoder (also when the job ends early: frees libsndfile's state)."""
        out, self._out = self._out, None
        if out is not None:
            out.close()
        self.tail = None

    def _write(self, audio: np.ndarray) -> None:
        assert self._out is not None, "the chain was closed"
        room = self.total - self.written
        audio = audio[:, : max(0, room)]
        for start in range(0, audio.shape[-1], audio_io.ENCODE_BLOCK_FRAMES):
            block = np.asarray(audio[:, start : start + audio_io.ENCODE_BLOCK_FRAMES], dtype=np.float32)
            if not np.isfinite(block).all():
                raise audio_io.EncodeError("the audio holds non-finite samples (NaN or infinity)")
            self._out.write(np.ascontiguousarray(np.clip(block, -1.0, 1.0).T))
        self.written += audio.shape[-1]


def crossfade(out: np.ndarray, into: np.ndarray) -> np.ndarray:
    """Equal-power crossfade from `out` to `into` (same shape (channels, frames)): gains cos and sin of a quarter
    turn, at the frames' centres, so neither end repeats a sample and the gains' squares always sum to one."""
    n = out.shape[-1]
    theta = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1) * (math.pi / 2)
    return (out * np.cos(theta) + into * np.sin(theta)).astype(np.float32)
