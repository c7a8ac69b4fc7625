"""Audio files in and out, at the extremes: the longest clip any model allows in every format,
encode failures, and upload "bombs" (small files that decode to huge audio) in every codec.

Where a failure would be a crash (libsndfile's Vorbis encoder segfaults on one-shot writes of
~2^21 frames), the work runs in a child process; memory is measured there too (peak RSS), so no
assertion depends on how fast this machine is."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stable_audio_service import audio as audio_io
from stable_audio_service.config import Settings

from .reliability_report import record

SR = 44100
LONGEST_S = 400  # beyond the longest clip any model allows (SA3 medium: 380 s)
MIB = 2**20
UPLOADS = "Uploads and long clips (audio.encode / audio.decode_upload)"


def child(script: str, *args: str, timeout: float = 300) -> dict:
    """Run `script` in a fresh interpreter; it prints one JSON line. A crash is a failed assertion."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"child exited {proc.returncode}: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


LONG_ENCODE = """
import io, json, sys
import numpy as np, soundfile as sf
from stable_audio_service import audio
fmt, seconds = sys.argv[1], float(sys.argv[2])
n = int(seconds * 44100)
t = np.arange(n, dtype=np.float32) / 44100
x = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)])
data = audio.encode(x, 44100, fmt)
with sf.SoundFile(io.BytesIO(data)) as f:
    frames, decoded = f.frames, 0
    while len(block := f.read(1 << 20, dtype="float32")):
        decoded += len(block)
print(json.dumps({"bytes": len(data), "frames": frames, "decoded": decoded, "channels": f.channels}))
"""


def test_400_s_ogg_and_mp3_encode_and_decode_to_the_right_length():
    """Both in child processes at once: a segfault fails the test instead of killing pytest."""
    with ThreadPoolExecutor(2) as pool:
        runs = pool.map(lambda fmt: child(LONG_ENCODE, fmt, str(LONGEST_S)), ("ogg", "mp3"))
        results = dict(zip(("ogg", "mp3"), runs, strict=True))
    for fmt, r in results.items():
        assert r["channels"] == 2, fmt
        assert r["frames"] == r["decoded"] == LONGEST_S * SR, (fmt, r)
        record(
            UPLOADS,
            f"{LONGEST_S} s stereo 44.1 kHz encoded as {fmt} (child process)",
            f"{r['bytes'] / MIB:.1f} MiB, decodes to {r['decoded']} frames",
        )


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_400_s_wav_and_flac_round_trip(fmt):
    x = np.zeros((2, LONGEST_S * SR), np.float32)
    x[0, ::441] = 0.5
    out, rate = audio_io.decode(audio_io.encode(x, SR, fmt))
    assert rate == SR and out.shape == x.shape
    np.testing.assert_allclose(out[:, : 10 * SR], x[:, : 10 * SR], atol=1 / 32767)


def test_every_encoder_call_gets_at_most_one_block(monkeypatch):
    """The Vorbis crash needs ~2^21 frames in one write; no format may ever be fed more than a block."""
    calls = []
    real_write = sf.SoundFile.write

    def spy(self, data):
        calls.append(len(data))
        return real_write(self, data)

    monkeypatch.setattr(sf.SoundFile, "write", spy)
    for fmt in audio_io.FORMATS:
        calls.clear()
        audio_io.encode(np.zeros((2, 5 * SR), np.float32), SR, fmt)  # 3.4 blocks
        assert max(calls) <= audio_io.ENCODE_BLOCK_FRAMES < 2**21 and sum(calls) == 5 * SR, fmt


def test_encode_clips_and_keeps_every_sample():
    x = np.stack([np.linspace(-2, 2, 3 * audio_io.ENCODE_BLOCK_FRAMES + 7)] * 2).astype(np.float32)
    out, _ = audio_io.decode(audio_io.encode(x, SR, "wav"))
    assert out.shape == x.shape
    np.testing.assert_allclose(out, np.clip(x, -1, 1), atol=1 / 32767)


@pytest.mark.parametrize(
    "audio,rate,fmt,says",
    [
        (np.full((2, 1000), np.nan, np.float32), SR, "wav", "non-finite"),
        (np.zeros((2, 1000), np.float32), 7000, "mp3", "could not encode"),  # MPEG has no 7 kHz
        (np.zeros(1000, np.float32), SR, "flac", "channels, samples"),
    ],
)
def test_encode_failures_raise_encode_error(audio, rate, fmt, says):
    with pytest.raises(audio_io.EncodeError, match=says):
        audio_io.encode(audio, rate, fmt)


# -- uploads -------------------------------------------------------------------------------
CODECS = [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")]


def write(x: np.ndarray, rate: int, container: str, subtype: str) -> bytes:
    """(channels, samples) float -> file bytes, written in blocks (the test's own encoder)."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate, x.shape[0], format=container, subtype=subtype) as f:
        for i in range(0, x.shape[1], 1 << 16):
            f.write(np.ascontiguousarray(x[:, i : i + (1 << 16)].T))
    return buf.getvalue()


def silence(rate: int, channels: int, seconds: float, container: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    n, block = int(rate * seconds), max(1, (1 << 20) // channels)
    zeros = np.zeros((block, channels), np.int16)
    with sf.SoundFile(buf, "w", rate, channels, format=container, subtype=subtype) as f:
        for i in range(0, n, block):
            f.write(zeros[: min(block, n - i)])
    return buf.getvalue()


def chirp(rate: int, seconds: float, channels: int = 2) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    rows = [0.4 * np.sin(2 * np.pi * (200 + 300 * t) * t), 0.3 * np.sin(2 * np.pi * 550 * t)]
    return np.stack(rows[:channels]).astype(np.float32)


@pytest.mark.parametrize("container,subtype", CODECS)
def test_upload_refused_from_its_header_before_decoding(container, subtype, monkeypatch):
    data = write(chirp(8000, 2.0), 8000, container, subtype)
    frames = sf.info(io.BytesIO(data)).frames

    def must_not_decode(*a, **k):
        raise AssertionError("decoded a file its header already disqualified")

    monkeypatch.setattr(audio_io, "_read_frames", must_not_decode)
    with pytest.raises(audio_io.UploadError, match=f"{frames * 2} samples.*the limit is {frames * 2 - 1} samples"):
        audio_io.decode_upload(data, SR, 2, max_bytes=10**7, max_seconds=10, max_samples=frames * 2 - 1)


@pytest.mark.parametrize("container,subtype", CODECS)
def test_upload_decodes_only_what_the_clip_uses_and_matches_the_full_decode(container, subtype):
    rate, usable = 48000, 22050  # 0.5 s of output from a 12 s file
    data = write(chirp(rate, 12.0), rate, container, subtype)
    full, _ = audio_io.decode_upload(data, SR, 2, max_bytes=10**8, max_seconds=60)
    part, info = audio_io.decode_upload(data, SR, 2, max_bytes=10**8, max_seconds=60, usable_samples=usable)
    assert part.shape == (2, usable) and part.dtype == np.float32
    assert info["decoded_frames"] <= usable * rate / SR + audio_io.resample_margin(rate, SR) + 1
    assert info["frames"] >= 12 * rate - 2048 and info["channels"] == 2 and info["sample_rate"] == rate
    np.testing.assert_allclose(part, full[:, :usable], atol=1e-6)


@pytest.mark.parametrize("have,want", [(1, 2), (6, 2), (2, 1), (4, 1)])
def test_upload_channel_mixing(have, want):
    x = np.stack([np.full(8000, 0.1 * (c + 1), np.float32) for c in range(have)])
    out, info = audio_io.decode_upload(write(x, 8000, "WAV", "FLOAT"), 8000, want, max_bytes=10**7, max_seconds=5)
    expected = audio_io.match_channels(x, want)
    assert out.shape == (want, 8000) and info["channels"] == have
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize(
    "data,says",
    [
        (write(chirp(500, 1.0, 1), 500, "WAV", "PCM_16"), "sample rate is 500 Hz"),
        (write(np.full((1, 100), np.nan, np.float32), 8000, "WAV", "FLOAT"), "non-finite"),
    ],
)
def test_upload_odd_files_are_refused(data, says):
    with pytest.raises(audio_io.UploadError, match=says):
        audio_io.decode_upload(data, SR, 2, max_bytes=10**7, max_seconds=5)


def test_upload_of_an_odd_rate_is_resampled_with_a_small_filter():
    """44 099 Hz -> 44 100 Hz exactly would need a 1.7M-tap filter; the ratio is approximated instead."""
    up, down = audio_io._ratio(44099, SR)
    assert max(up, down) <= audio_io.MAX_RATIO_DENOMINATOR * 2
    data = write(chirp(44099, 1.0), 44099, "WAV", "PCM_16")
    out, _ = audio_io.decode_upload(data, SR, 2, max_bytes=10**7, max_seconds=5)
    assert abs(out.shape[1] - SR) <= 1


def test_stream_without_a_declared_length_is_refused():
    data = bytearray(write(chirp(8000, 1.0), 8000, "FLAC", "PCM_16"))
    # STREAMINFO's 36-bit total-samples field (0 = unknown, as a streaming encoder writes it)
    field = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
    data[18:26] = field.to_bytes(8, "big")
    with pytest.raises(audio_io.UploadError, match="does not declare its length"):
        audio_io.decode_upload(bytes(data), SR, 2, max_bytes=10**7, max_seconds=5)


def test_wav_that_claims_more_than_it_holds_decodes_what_is_there():
    data = bytearray(write(chirp(8000, 1.0), 8000, "WAV", "PCM_16"))
    at = data.find(b"data")
    data[at + 4 : at + 8] = struct.pack("<I", 0xFFFFFFF0)  # the data chunk says 4 GiB
    out, info = audio_io.decode_upload(bytes(data), 8000, 2, max_bytes=10**7, max_seconds=5)
    assert info["frames"] == 8000 and out.shape == (2, 8000)


# -- bombs: a few hundred KB that would decode to GBs ----------------------------------------
MEASURE = """
import json, sys
import psutil
import scipy.signal  # everything the decode uses is imported before the baseline
from stable_audio_service import audio


def peak_rss():
    # VmHWM: this process's peak RSS (ru_maxrss would include the forking parent's)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


results = []
for path, kwargs in json.loads(sys.argv[1]):
    data = open(path, "rb").read()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak to the current RSS
    before = psutil.Process().memory_info().rss
    out = {}
    try:
        audio_out, info = audio.decode_upload(data, 44100, 2, **kwargs)
        out.update(shape=list(audio_out.shape), decoded_frames=info["decoded_frames"], frames=info["frames"])
        del audio_out
    except audio.UploadError as exc:
        out["error"] = str(exc)
    out["peak_growth_mib"] = (peak_rss() - before) / 2**20
    results.append(out)
print(json.dumps(results))
"""

BOMBS = {
    # the issue's: 8 channels, 192 kHz, 399 s of silence -> 612 M samples (2.3 GiB of float32)
    "flac": (192_000, 8, 399.0, "FLAC", "PCM_16"),
    # inside the default sample cap (17.6 M samples) so it gets past the header check
    "ogg": (22_050, 2, 399.0, "OGG", "VORBIS"),
    "mp3": (8_000, 1, 399.0, "MP3", "MPEG_LAYER_III"),
}


@pytest.fixture(scope="module")
def bombs(pytestconfig):
    """The bomb files, made once and kept in pytest's cache (the FLAC one takes seconds to encode)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak-memory measurement needs Linux /proc (VmHWM, clear_refs)")
    cache = pytestconfig.cache.mkdir("stable-audio-upload-bombs")

    def make(name):
        rate, channels, seconds, container, subtype = BOMBS[name]
        path = cache / f"{rate}-{channels}-{seconds:g}.{name}"
        if not path.exists():
            tmp = path.with_suffix(".part")
            tmp.write_bytes(silence(rate, channels, seconds, container, subtype))
            tmp.rename(path)
        return name, path

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(make, BOMBS))


def upload_limits(**kw) -> dict:
    s = Settings()
    return {"max_bytes": s.max_upload_bytes, "max_seconds": s.max_upload_seconds, **kw}


@pytest.fixture(scope="module")
def measured(bombs) -> dict:
    """Every bomb, decoded in one child process: with the default limits, and with the sample cap
    lifted for a 1 s clip. Each case's peak RSS growth is measured on its own."""
    cases = {}
    for name, path in bombs.items():
        cases[(name, "default")] = (str(path), upload_limits(max_samples=Settings().max_upload_samples))
        cases[(name, "1 s clip")] = (str(path), upload_limits(max_samples=None, usable_samples=SR))
    results = child(MEASURE, json.dumps(list(cases.values())))
    return dict(zip(cases, results, strict=True))


def test_flac_bomb_is_refused_from_its_header_with_the_default_limit(bombs, measured):
    assert bombs["flac"].stat().st_size < 2 * MIB
    r = measured[("flac", "default")]
    assert "612864000 samples" in r["error"] and f"the limit is {Settings().max_upload_samples}" in r["error"]
    assert r["peak_growth_mib"] < 64
    record(
        UPLOADS,
        f"FLAC bomb ({bombs['flac'].stat().st_size // 1024} KiB: 8 ch, 192 kHz, 399 s), default limits",
        f"refused from the header; peak RSS growth {r['peak_growth_mib']:.1f} MiB",
    )


@pytest.mark.parametrize("name", list(BOMBS))
def test_bomb_with_a_one_second_clip_decodes_about_one_second(measured, name):
    """Even with the sample cap lifted, only the frames a 1 s clip can use are decoded."""
    rate = BOMBS[name][0]
    r = measured[(name, "1 s clip")]
    assert "error" not in r, r
    assert r["shape"] == [2, SR]
    assert r["frames"] >= 398 * rate  # what the file holds ...
    assert r["decoded_frames"] <= rate + audio_io.resample_margin(rate, SR) + 1  # ... and what was decoded
    # a full decode would take frames x channels x 4 bytes (2.3 GiB for the FLAC)
    assert r["peak_growth_mib"] < 128, r
    rate, channels, seconds = BOMBS[name][:3]
    record(
        UPLOADS,
        f"{name} bomb ({channels} ch, {rate} Hz, {seconds:g} s), sample cap lifted, 1 s clip",
        f"decoded {r['decoded_frames']} of {r['frames']} frames; peak RSS growth {r['peak_growth_mib']:.1f} MiB",
    )
