"""Loudness normalisation of a finished clip, after the model made it and before integer encoding.

Users want levels they can use as they are: a clip at a streaming loudness (e.g. -14 LUFS) or peaking just below
full scale. Two modes, each one gain over the whole clip (no dynamics processing, so the audio is the model's,
only louder or quieter):

- `peak`: the sample peak goes to `PEAK_TARGET_DBFS` (-1 dBFS).
- `lufs`: the integrated loudness (ITU-R BS.1770-4, K-weighted and gated, measured by `pyloudnorm`; the filter
  is not ours) goes to the target, **unless that would lift the true peak above `TRUE_PEAK_CEILING_DBTP`**: the
  gain is then capped so the true peak sits at the ceiling, and the report says `limited` and by how much the
  target was missed. This is the simplest limiter that can never clip and never colours the sound; a look-ahead
  limiter would reach loud targets but change the audio, which a caller did not ask for. The true peak is the
  sample peak of the clip oversampled 4x (BS.1770-4 Annex 2), computed block by block so a 380 s clip does
  not take a 4x copy of itself in memory.

Clips BS.1770 cannot measure are left as generated (gain 0 dB) and the report says why: shorter than one 400 ms
gating block, or silent (every block under the -70 LUFS absolute gate). The same for a silent clip in `peak`
mode. The ceiling holds for the PCM formats (wav, flac); lossy codecs may overshoot it by a fraction of a dB,
which is what the -1 dBTP margin is for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyloudnorm
from scipy.signal import resample_poly

from .limits import MAX_LOUDNESS_LUFS, MIN_LOUDNESS_LUFS

PEAK_TARGET_DBFS = -1.0
TRUE_PEAK_CEILING_DBTP = -1.0
OVERSAMPLE = 4
BLOCK_S = 0.4  # BS.1770's gating block: shorter clips have no integrated loudness
ABSOLUTE_GATE_LUFS = -70.0  # BS.1770's absolute gate (as pyloudnorm applies it: blocks at or above it count)
# A sample peak below this is silence: no gain can make a usable level of it (16-bit PCM's step is -96 dBFS).
SILENCE_DBFS = -120.0
# Frames per oversampling call, and the frames either side that reach a block's samples through
# resample_poly's filter (its half-length is 10 x OVERSAMPLE taps at the high rate: 10 input frames).
_TP_BLOCK = 1 << 16
_TP_MARGIN = 64
# One correction pass when the output misses the target by more than this (BS.1770's absolute gate makes the
# measure non-linear in the gain where blocks cross it).
_TOLERANCE_LU = 0.05
MODES = ("none", "peak")


@dataclass(frozen=True)
class LoudnessTarget:
    """What a request asks for: `peak` (target: the sample peak in dBFS) or `lufs` (target: integrated loudness
    in LUFS). A request without one (`loudness: "none"`) carries None and its audio is not touched."""

    mode: Literal["peak", "lufs"]
    target: float


@dataclass(frozen=True)
class LoudnessReport:
    """What was done to a clip (`meta.loudness`, and `gain_db` in the `X-Loudness-Gain-dB` header)."""

    mode: str
    target: float  # LUFS (lufs), or dBFS sample peak (peak)
    gain_db: float  # the gain applied to the whole clip
    measured_lufs: float | None  # the clip's integrated loudness as generated; None: not measurable
    output_lufs: float | None  # the result's
    true_peak_dbtp: float | None  # the result's true peak; None: silent
    ceiling_dbtp: float
    limited: bool  # the gain was capped by the true-peak ceiling: the target was not reached
    note: str | None = None  # why the gain is what it is, when it is not simply the target's

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "target": self.target,
            "gain_db": self.gain_db,
            "measured_lufs": self.measured_lufs,
            "output_lufs": self.output_lufs,
            "true_peak_dbtp": self.true_peak_dbtp,
            "ceiling_dbtp": self.ceiling_dbtp,
            "limited": self.limited,
            "note": self.note,
        }


def parse(value: str | float | int | None) -> LoudnessTarget | None:
    """A request's `loudness` ("none", "peak", or a number of LUFS; numeric strings too, for the CLI) as a
    target; raises ValueError with a message for the caller."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError('must be "none", "peak" or a number of LUFS')
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "none":
            return None
        if text == "peak":
            return LoudnessTarget("peak", PEAK_TARGET_DBFS)
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f'must be "none", "peak" or a number of LUFS, not {value!r}') from None
    lufs = float(value)
    if not math.isfinite(lufs) or not MIN_LOUDNESS_LUFS <= lufs <= MAX_LOUDNESS_LUFS:
        raise ValueError(f"a LUFS target must be between {MIN_LOUDNESS_LUFS:g} and {MAX_LOUDNESS_LUFS:g}")
    return LoudnessTarget("lufs", lufs)


def _db(linear: float) -> float:
    return 20.0 * math.log10(linear) if linear > 0 else -math.inf


def true_peak(audio: np.ndarray) -> float:
    """The largest absolute value of `audio` (channels, samples) oversampled `OVERSAMPLE` times (linear; at
    least the sample peak)."""
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    for row in audio:
        n = row.shape[0]
        for start in range(0, n, _TP_BLOCK):
            lo, end = max(0, start - _TP_MARGIN), min(n, start + _TP_BLOCK)
            hi = min(n, end + _TP_MARGIN)
            up = resample_poly(np.asarray(row[lo:hi], dtype=np.float32), OVERSAMPLE, 1)
            a = (start - lo) * OVERSAMPLE
            peak = max(peak, float(np.abs(up[a : a + (end - start) * OVERSAMPLE]).max()))
    return peak


def integrated_lufs(audio: np.ndarray, sample_rate: int) -> float | None:
    """BS.1770-4 integrated loudness of `audio` (channels, samples) by pyloudnorm; None when it has none (shorter
    than one gating block, silent, or more channels than BS.1770 weights)."""
    return _measure(audio, sample_rate)[0]


def _measure(audio: np.ndarray, sample_rate: int) -> tuple[float | None, np.ndarray]:
    """The integrated loudness and each gating block's loudness (LUFS)."""
    if audio.shape[-1] < math.ceil(BLOCK_S * sample_rate) or not 1 <= audio.shape[0] <= 5:
        return None, np.zeros(0)
    meter = pyloudnorm.Meter(sample_rate, block_size=BLOCK_S)
    lufs = float(meter.integrated_loudness(audio.T))
    return (lufs if math.isfinite(lufs) else None), np.asarray(meter.blockwise_loudness, dtype=np.float64)


def normalise(audio: np.ndarray, sample_rate: int, target: LoudnessTarget) -> tuple[np.ndarray, LoudnessReport]:
    """`audio` (channels, samples, float in [-1, 1]) at one gain toward `target`, and what was done. The input is
    returned unchanged (the same array) when no gain applies."""
    audio = np.asarray(audio, dtype=np.float32)
    measured, blocks = _measure(audio, sample_rate)
    peak_in = float(np.abs(audio).max()) if audio.size else 0.0
    tp_in = true_peak(audio) if peak_in > 0 else 0.0
    room = TRUE_PEAK_CEILING_DBTP - _db(tp_in)  # the most gain the ceiling allows
    note: str | None = None
    gain_db, limited = 0.0, False
    if _db(peak_in) < SILENCE_DBFS:
        note = "silent: no gain applies"
    elif target.mode == "peak":
        gain_db = target.target - _db(peak_in)
    elif measured is None:
        if audio.shape[-1] < math.ceil(BLOCK_S * sample_rate):
            note = f"shorter than BS.1770's {BLOCK_S * 1000:.0f} ms block: no integrated loudness, left as generated"
        else:
            note = "no integrated loudness (every block under BS.1770's -70 LUFS gate): left as generated"
    else:
        gain_db, limited, note = _capped(target.target - measured, room)
    out = audio if gain_db == 0.0 else _gain(audio, gain_db)
    output = _output_lufs(out, sample_rate, measured, blocks, gain_db)
    if target.mode == "lufs" and not limited and output is not None and abs(output - target.target) > _TOLERANCE_LU:
        # the absolute gate let other blocks in at this gain: correct once, still under the ceiling
        gain_db, limited, note = _capped(gain_db + target.target - output, room)
        out = _gain(audio, gain_db)
        output = integrated_lufs(out, sample_rate)
    tp_out = tp_in * 10.0 ** (gain_db / 20.0)
    report = LoudnessReport(
        mode=target.mode,
        target=target.target,
        gain_db=round(gain_db, 3),
        measured_lufs=_rounded(measured),
        output_lufs=_rounded(output),
        true_peak_dbtp=_rounded(_db(tp_out)) if tp_out > 0 else None,
        ceiling_dbtp=TRUE_PEAK_CEILING_DBTP,
        limited=limited,
        note=note,
    )
    return out, report


def _capped(wanted_db: float, room_db: float) -> tuple[float, bool, str | None]:
    """The gain toward the target, capped where the true peak would pass the ceiling: (gain, limited, note)."""
    if wanted_db <= room_db:
        return wanted_db, False, None
    short = f"{wanted_db - room_db:.2f} dB short of the target"
    return room_db, True, f"{short}: the true peak reached the {TRUE_PEAK_CEILING_DBTP:g} dBTP ceiling"


def _output_lufs(
    out: np.ndarray, sample_rate: int, measured: float | None, blocks: np.ndarray, gain_db: float
) -> float | None:
    """The result's integrated loudness. BS.1770 is linear in power, and its relative gate moves with the gain, so
    it is `measured + gain` unless a block crossed the fixed -70 LUFS absolute gate: only then is it measured."""
    if measured is None:
        return None
    gate = ABSOLUTE_GATE_LUFS
    if np.array_equal(blocks >= gate, blocks + gain_db >= gate):
        return measured + gain_db
    return integrated_lufs(out, sample_rate)


def _gain(audio: np.ndarray, gain_db: float) -> np.ndarray:
    return audio * np.float32(10.0 ** (gain_db / 20.0))


def _rounded(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 3)
