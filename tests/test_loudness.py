"""Loudness: a LUFS target (ITU-R BS.1770, measured here with pyloudnorm on the decoded file) or a -1 dBFS peak, one
gain per clip, never past the -1 dBTP true-peak ceiling; "none" leaves today's output bitwise; the gain is in
`meta.loudness` and `X-Loudness-Gain-dB`, through HTTP (both backends), the Python client and the CLI."""

from __future__ import annotations

import asyncio
import pickle

import numpy as np
import pyloudnorm
import pytest
from scipy.signal import resample_poly
from typer.testing import CliRunner

from stable_audio_service import loudness
from stable_audio_service.audio import decode, encode
from stable_audio_service.cli import app
from stable_audio_service.client import AsyncStableAudioClient, StableAudioClient
from stable_audio_service.config import Settings
from stable_audio_service.engine.client import JobInfo, ResultInfo
from stable_audio_service.engine.jobs import JobStatus
from stable_audio_service.models.base import GenerationParams
from stable_audio_service.service import RequestError, check_loudness

from .conftest import BACKENDS, FAST, LiveServer, decode_b64

SR = 44100
TOLERANCE_LU = 0.5


def lufs(audio: np.ndarray, sr: int = SR) -> float:
    """The reference measure: pyloudnorm's BS.1770 meter on (channels, samples)."""
    return float(pyloudnorm.Meter(sr).integrated_loudness(np.asarray(audio, dtype=np.float64).T))


def true_peak_db(audio: np.ndarray) -> float:
    """An independent true-peak measure: 8x oversampling of the whole clip at once."""
    up = np.stack([resample_poly(np.asarray(row, dtype=np.float64), 8, 1) for row in audio])
    return 20 * np.log10(max(np.abs(up).max(), np.abs(audio).max()))


def noise(level_db: float, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    return (10 ** (level_db / 20) * np.random.default_rng(seed).standard_normal((2, int(SR * seconds)))).astype(
        np.float32
    )


def intersample() -> np.ndarray:
    """Noise with a 2 ms burst of a sine at a quarter of the rate, sampled 45 degrees off its crests: the
    burst's true peak is 3 dB above every one of its samples, so a gain that watched only the samples would clip."""
    x = noise(-34)
    t = np.arange(int(SR * 0.002)) / SR
    x[:, SR - 64 : SR + t.size + 64] = 0.0
    x[:, SR : SR + t.size] = 0.3 * np.sin(2 * np.pi * (SR / 4) * t + np.pi / 4)
    return x


# -- the processing, on synthetic signals ---------------------------------------------------------------------------
@pytest.mark.parametrize("target", [-14.0, -23.0, -40.0])
@pytest.mark.parametrize("kind", ["noise", "sine"])
def test_a_lufs_target_is_met_on_synthetic_signals(kind, target):
    t = np.arange(SR * 3) / SR
    x = noise(-30) if kind == "noise" else np.stack([0.1 * np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32)
    y, report = loudness.normalise(x, SR, loudness.parse(target))
    # what a client decodes from the 16-bit file
    decoded, _ = decode(encode(y, SR, "wav"))
    assert abs(lufs(decoded) - target) <= TOLERANCE_LU
    assert report.mode == "lufs" and not report.limited and report.note is None
    assert abs(report.output_lufs - lufs(y)) < 0.01
    assert report.gain_db == pytest.approx(target - lufs(x), abs=0.01)


def test_the_target_is_met_when_the_gain_moves_blocks_across_the_absolute_gate():
    """BS.1770 ignores 400 ms blocks under -70 LUFS: alternating -74 / -66 LUFS seconds measure as the loud ones alone,
    but lifted by 46 dB all of them count. One gain from the first measure would miss by about 2 LU."""
    base = noise(0, seconds=1.0)
    ref = lufs(np.tile(base, (1, 2)))
    x = np.concatenate([base * 10 ** ((lvl - ref) / 20) for lvl in [-74, -66] * 5], axis=1).astype(np.float32)
    naive = x * 10 ** ((-20 - lufs(x)) / 20)
    assert abs(lufs(naive) + 20) > 1.0  # the trap is real
    y, report = loudness.normalise(x, SR, loudness.parse(-20))
    assert abs(lufs(y) + 20) <= 0.1 and not report.limited


def test_peak_mode_puts_the_sample_peak_at_minus_1_dbfs():
    x = noise(-30)
    y, report = loudness.normalise(x, SR, loudness.parse("peak"))
    decoded, _ = decode(encode(y, SR, "wav"))
    assert 20 * np.log10(np.abs(decoded).max()) == pytest.approx(-1.0, abs=0.01)
    assert report.mode == "peak" and report.target == -1.0
    assert report.gain_db == pytest.approx(-1.0 - 20 * np.log10(np.abs(x).max()), abs=0.01)


def test_the_limiter_keeps_the_true_peak_under_the_ceiling():
    x = intersample()
    sample_peak = 20 * np.log10(np.abs(x).max())
    assert true_peak_db(x) - sample_peak > 2.5  # the samples hide the peak
    # -14 LUFS needs far more gain than the ceiling allows; a cap on the sample peak alone would let it past 0 dBTP
    wanted = -14 - lufs(x)
    assert true_peak_db(x) + min(wanted, -1 - sample_peak) > 0
    y, report = loudness.normalise(x, SR, loudness.parse(-14))
    decoded, _ = decode(encode(y, SR, "wav"))
    assert true_peak_db(decoded) <= loudness.TRUE_PEAK_CEILING_DBTP + 0.02
    assert true_peak_db(decoded) >= loudness.TRUE_PEAK_CEILING_DBTP - 0.1  # capped at the ceiling, not below it
    assert report.limited and "short of the target" in report.note
    assert lufs(decoded) < -14 - TOLERANCE_LU  # the target was not reached, and the report says so
    assert report.output_lufs == pytest.approx(lufs(y), abs=0.01)
    assert report.true_peak_dbtp == pytest.approx(true_peak_db(decoded), abs=0.05)


@pytest.mark.parametrize(
    ("audio", "why"),
    [
        (noise(-20, seconds=0.3), "400 ms"),  # under one BS.1770 gating block
        (np.zeros((2, SR), np.float32), "silent"),
        (noise(-85), "-70 LUFS"),  # every block under the absolute gate
    ],
    ids=["short", "silent", "under-the-gate"],
)
def test_a_clip_bs1770_cannot_measure_is_left_as_generated(audio, why):
    y, report = loudness.normalise(audio, SR, loudness.parse(-14))
    assert y is audio or np.array_equal(y, audio)
    assert report.gain_db == 0.0 and why in report.note and report.output_lufs is None


def test_peak_mode_leaves_silence_alone():
    silence = np.zeros((2, SR), np.float32)
    y, report = loudness.normalise(silence, SR, loudness.parse("peak"))
    assert np.array_equal(y, silence) and report.gain_db == 0.0 and report.true_peak_dbtp is None


def test_parse_and_the_request_path_name_the_field():
    assert loudness.parse("none") is None and loudness.parse(None) is None
    assert loudness.parse("peak") == loudness.LoudnessTarget("peak", -1.0)
    assert loudness.parse("-14") == loudness.parse(-14) == loudness.LoudnessTarget("lufs", -14.0)
    for bad in ["loud", 3, -71, float("nan"), True]:
        with pytest.raises(RequestError) as err:
            check_loudness(bad, longform=False)
        assert err.value.loc == ("loudness",)
    with pytest.raises(RequestError, match="long-form") as err:  # a level needs the whole clip
        check_loudness(-14, longform=True)
    assert err.value.loc == ("loudness",)
    assert check_loudness("none", longform=True) is None


def test_the_target_and_the_report_cross_the_ray_wire():
    """Replicas get `GenerationParams` and send `JobInfo` back pickled: the level travels both ways."""
    params = GenerationParams("x", 1.0, 7.0, 10, 1, loudness=loudness.parse(-14))
    assert pickle.loads(pickle.dumps(params)).loudness == loudness.LoudnessTarget("lufs", -14.0)
    _, report = loudness.normalise(noise(-30), SR, loudness.parse(-14))
    facts = dict(position=None, eta_s=None, step=10, total_steps=10, created=0.0, started=0.0, finished=1.0)
    nothing = dict(error=None, error_status=None, retry_after_s=None, client_job_id=None, trace_id=None, span_id=None)
    info = JobInfo(
        id="j",
        status=JobStatus.done,
        timings={},
        seed=1,
        format="wav",
        **facts,
        **nothing,
        result=ResultInfo("wav", SR, 2, SR, 100, loudness=(report,)),
    )
    assert pickle.loads(pickle.dumps(info)).result.loudness == (report,)


# -- through the service (the tiny Open 1.0 model) -----------------------------------------------------------------
BODY = {"prompt": "rain on a tin roof", **FAST, "seed": 11}


@pytest.mark.parametrize("backend", BACKENDS, indirect=True, scope="session")
def test_a_lufs_target_is_met_on_the_models_output(client):
    plain = client.post("/predict", json=BODY)
    levelled = client.post("/predict", json={**BODY, "loudness": -18})
    assert plain.status_code == levelled.status_code == 200, levelled.text
    before, sr = decode_b64(plain.json()["audio_b64"])
    after, _ = decode_b64(levelled.json()["audio_b64"])
    assert abs(lufs(after, sr) + 18) <= TOLERANCE_LU
    assert abs(lufs(before, sr) + 18) > 1.0  # the model alone is not there: the gain did it
    meta = levelled.json()["meta"]["loudness"]
    assert meta["mode"] == "lufs" and meta["target"] == -18.0 and not meta["limited"]
    assert meta["gain_db"] == pytest.approx(-18 - lufs(before, sr), abs=0.05)
    assert meta["measured_lufs"] == pytest.approx(lufs(before, sr), abs=0.05)
    assert meta["true_peak_dbtp"] <= -1.0
    assert "loudness" not in plain.json()["meta"] or plain.json()["meta"]["loudness"] is None


def test_none_is_bitwise_todays_output(local_client):
    plain = local_client.post("/predict", json=BODY, headers={"accept": "audio/wav"})
    none = local_client.post("/predict", json={**BODY, "loudness": "none"}, headers={"accept": "audio/wav"})
    peak = local_client.post("/predict", json={**BODY, "loudness": "peak"}, headers={"accept": "audio/wav"})
    assert plain.content == none.content != peak.content
    assert "x-loudness-gain-db" not in plain.headers and "x-loudness-gain-db" not in none.headers
    # peak mode: the header is the gain, and the decoded file peaks at -1 dBFS
    before, _ = decode(plain.content)
    after, _ = decode(peak.content)
    gain = float(peak.headers["x-loudness-gain-db"])
    assert gain == pytest.approx(-1.0 - 20 * np.log10(np.abs(before).max()), abs=0.01)
    assert 20 * np.log10(np.abs(after).max()) == pytest.approx(-1.0, abs=0.01)


def test_jobs_report_the_gain_in_meta_and_on_the_audio(local_client):
    job = local_client.post("/jobs", json={**BODY, "loudness": -22}).json()
    with local_client.stream("GET", f"/jobs/{job['id']}/events") as events:
        for _ in events.iter_lines():
            pass  # the stream ends with the job
    view = local_client.get(f"/jobs/{job['id']}").json()
    assert view["status"] == "done"
    audio = local_client.get(f"/jobs/{job['id']}/audio")
    assert float(audio.headers["x-loudness-gain-db"]) == pytest.approx(view["meta"]["loudness"]["gain_db"], abs=0.005)
    decoded, sr = decode(audio.content)
    assert abs(lufs(decoded, sr) + 22) <= TOLERANCE_LU
    assert view["result"]["timings"]["loudness_s"] is not None


@pytest.mark.parametrize("value", ["loud", -80, 1, True, [], {"lufs": -14}])
@pytest.mark.parametrize("route", ["/predict", "/jobs"])
def test_a_bad_level_is_a_422_naming_loudness(local_client, route, value):
    response = local_client.post(route, json={**BODY, "loudness": value})
    assert response.status_code == 422
    assert [d["loc"] for d in response.json()["detail"]] == [["body", "loudness"]]


def test_models_states_the_field(local_client):
    field = local_client.get("/models").json()["fields"]["loudness"]
    assert field["default"] == "none" and field["choices"] == ["none", "peak"]
    assert (field["minimum"], field["maximum"], field["true_peak_ceiling_dbtp"]) == (-70.0, 0.0, -1.0)


# -- the client and the CLI ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(tiny_dir):
    server = LiveServer(Settings(model=str(tiny_dir), batch_wait_ms=0))
    yield server
    server.stop()


def test_the_client_passes_it_sync_and_async(live):
    with StableAudioClient(live.url) as sa:
        clip = sa.generate(BODY["prompt"], duration=1.0, num_inference_steps=10, seed=5, loudness=-20)
    assert abs(lufs(clip.to_numpy(), clip.sample_rate) + 20) <= TOLERANCE_LU
    assert clip.loudness_gain_db is not None and abs(clip.loudness_gain_db) > 0.5

    async def run():
        async with AsyncStableAudioClient(live.url) as sa:
            return await sa.generate(BODY["prompt"], duration=1.0, num_inference_steps=10, seed=5, loudness="peak")

    peak = asyncio.run(run())
    assert 20 * np.log10(np.abs(peak.to_numpy()).max()) == pytest.approx(-1.0, abs=0.01)
    assert peak.loudness_gain_db is not None


def test_the_cli_passes_it_here_and_to_a_server(tiny_dir, live, tmp_path):
    runner = CliRunner()
    common = ["--duration", "1", "--steps", "10", "--seed", "3"]
    here = runner.invoke(
        app, ["generate", "x", "-o", str(tmp_path / "a.wav"), "--model", str(tiny_dir), *common, "--loudness", "-19"]
    )
    assert here.exit_code == 0, here.output
    audio, sr = decode((tmp_path / "a.wav").read_bytes())
    assert abs(lufs(audio, sr) + 19) <= TOLERANCE_LU and "loudness: gain" in here.output
    remote = runner.invoke(
        app, ["generate", "x", "-o", str(tmp_path / "b.wav"), "--server", live.url, *common, "--loudness", "peak"]
    )
    assert remote.exit_code == 0, remote.output
    audio, _ = decode((tmp_path / "b.wav").read_bytes())
    assert 20 * np.log10(np.abs(audio).max()) == pytest.approx(-1.0, abs=0.01) and "loudness: gain" in remote.output
    bad = runner.invoke(app, ["generate", "x", "-o", str(tmp_path / "c.wav"), "--server", live.url, "--loudness", "x"])
    assert bad.exit_code != 0 and "loudness" in bad.output and not (tmp_path / "c.wav").exists()


def test_each_take_is_levelled_on_its_own(local_client):
    job = local_client.post("/jobs", json={**BODY, "loudness": -20, "num_outputs": 2}).json()
    with local_client.stream("GET", f"/jobs/{job['id']}/events") as events:
        for _ in events.iter_lines():
            pass
    for index in (0, 1):
        audio = local_client.get(f"/jobs/{job['id']}/audio", params={"index": index})
        assert audio.status_code == 200 and "x-loudness-gain-db" in audio.headers
        decoded, sr = decode(audio.content)
        assert abs(lufs(decoded, sr) + 20) <= TOLERANCE_LU
