"""Audio encoding (WAV/FLAC/OGG/MP3) of decoded clips, on its own thread beside the worker.

A long clip's encode must not hold up the next denoising steps of its batch mates or of the next batch, so the
worker hands each decoded clip over and goes on. The hand-over is bounded (`max_waiting` clips waiting or being
encoded; the worker waits beyond that), so the memory decoded clips take is bounded too. A clip already handed
over is still encoded and delivered when the worker dies.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .. import audio as audio_io
from .. import loudness as loudness_io
from .jobs import Job, JobResult

if TYPE_CHECKING:
    from ..loudness import LoudnessReport


class ClipEncoder:
    def __init__(
        self,
        cond: threading.Condition,
        *,
        workers: int,
        max_waiting: int,
        done: Callable[[Job, JobResult], None],
        failed: Callable[[Job, BaseException], None],
    ) -> None:
        """`cond`: the engine's lock, guarding `jobs` and notified when a clip leaves. `done(job, result)` and
        `failed(job, exc)` end the job (on an encoder thread). `workers` threads: one keeps clips ending in the
        order they were decoded and takes at most one core from the model's threads."""
        self._cond = cond
        self._done = done
        self._failed = failed
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="stable-audio-encode")
        self._slots = threading.BoundedSemaphore(max(1, max_waiting))
        self.jobs: list[Job] = []  # decoded, waiting for or inside the encoder (guarded by `cond`)

    def claim(self, job: Job) -> None:
        """Count `job` as the encoder's from now on (call with the lock held, in the same breath as it leaves
        the running batch, so it is never in neither)."""
        self.jobs.append(job)

    def encode(self, job: Job, samples: Any, sample_rate: int, t_decoded_ns: int) -> bool:
        """Hand a claimed job's decoded clip (or its takes' clips, a list in seed order) over (worker thread;
        waits while the encoder is `max_waiting` jobs behind). False when the encoder was shut down: the job was
        released and the caller must end it."""
        self._slots.acquire()
        try:
            self._pool.submit(self._encode, job, samples, sample_rate, t_decoded_ns)
        except RuntimeError:  # shut down (the service is stopping)
            self._slots.release()
            self._release(job)
            return False
        return True

    def shutdown(self) -> None:
        """Stop taking clips; clips not started yet are dropped (their jobs are answered by the shutdown)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _encode(self, job: Job, samples: Any, sample_rate: int, t_decoded_ns: int) -> None:
        """Encoder thread: the clip to its audio format, then the job's end. Never raises."""
        try:
            clips = samples if isinstance(samples, list) else [samples]
            clips, levels = _levelled(job, clips, sample_rate)
            data = [audio_io.encode(clip, sample_rate, job.format) for clip in clips]
            job.phase("audio_encode", t_decoded_ns, time.time_ns(), format=job.format)
            channels, frames = clips[0].shape
            result = JobResult(data[0], job.format, sample_rate, channels, frames, tuple(data[1:]), loudness=levels)
            del samples, clips
            self._done(job, result)
        except Exception as exc:
            self._failed(job, exc)
        finally:
            self._slots.release()
            self._release(job)

    def _release(self, job: Job) -> None:
        with self._cond:
            if job in self.jobs:
                self.jobs.remove(job)
            self._cond.notify_all()


def _levelled(job: Job, clips: list[Any], sample_rate: int) -> tuple[list[Any], tuple[LoudnessReport, ...]]:
    """The request's loudness target applied to each take, after the model cut it to length and before integer
    encoding (here, off the worker thread: measuring a long clip takes a while), and what was done to each."""
    target = job.params.loudness
    if target is None:
        return clips, ()
    t0 = time.time_ns()
    levelled = [loudness_io.normalise(clip, sample_rate, target) for clip in clips]
    job.phase("loudness", t0, time.time_ns(), mode=target.mode)
    return [clip for clip, _ in levelled], tuple(report for _, report in levelled)
