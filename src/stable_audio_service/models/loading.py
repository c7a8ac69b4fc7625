"""Find the weights, pick device and dtype, check memory, then load through the family that recognises the files.

Every failure here raises `ModelLoadError` with a message meant for a person: where we
looked, what was missing, what to do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DEFAULT_HUB_MODEL, DEFAULT_LOCAL_MODEL, Settings
from . import registry
from .base import AudioModel
from .common import GIB, MIB, ModelLoadError  # the loader's error: callers import it from here
from .family import Family, LoadRequest

log = logging.getLogger("stable_audio_service")
# diffusers/accelerate build models under a process-wide "empty weights" context: two loads at once in
# one process corrupt each other ("Cannot copy out of meta tensor"), so loads take turns.
_LOAD_LOCK = threading.Lock()


def pick_device(requested: str = "auto") -> str:
    """`auto`: the first accelerator torch sees (CUDA or ROCm, then Apple's MPS), else the CPU."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():  # ROCm builds answer here too
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# CPU features with native bfloat16 matmul instructions (AMX tiles, AVX-512 BF16 dot products); without one of
# them torch converts bfloat16 to float32 around every matmul, which is slower than float32 itself.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# `auto` serves bfloat16 on the CPU only when its GEMM is at least this much faster than float32's: the matmuls are
# most of a step, but norms, attention softmax and the rest gain less, and bfloat16 changes the numbers.
AUTO_BF16_MIN_SPEEDUP = 1.3


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype a model is served in and why, for the start-up log and `LoadedInfo`."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (`cpuinfo` replaces the file in tests); empty where there is no
    such file, which makes `auto` keep float32 on the CPU."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def bf16_gemm_speedup(rows: int = 256, width: int = 1024, hidden: int = 4096, budget_s: float = 0.5) -> float:
    """float32 time / bfloat16 time of one DiT-like GEMM (`rows` tokens through a `width` x `hidden` feed-forward
    projection: the shape of most of a small SA3 step), best of alternating tries within `budget_s` (about 0.1 s
    on a 2-core CPU). Flags say an instruction exists, not that torch's kernels use it or that it pays: this says
    whether it pays here."""
    x, w = torch.randn(rows, width), torch.randn(hidden, width)
    pairs = {torch.float32: (x, w), torch.bfloat16: (x.bfloat16(), w.bfloat16())}
    best = dict.fromkeys(pairs, float("inf"))
    started = time.perf_counter()
    with torch.no_grad():
        for a, b in pairs.values():  # first calls build the kernels: not timed
            torch.nn.functional.linear(a, b)
        for attempt in range(5):
            for dtype, (a, b) in pairs.items():
                t0 = time.perf_counter()
                torch.nn.functional.linear(a, b)
                best[dtype] = min(best[dtype], time.perf_counter() - t0)
            if attempt >= 1 and time.perf_counter() - started > budget_s:
                break
    return best[torch.float32] / best[torch.bfloat16]


def choose_dtype(
    device: str,
    requested: str = "auto",
    *,
    cpu_bfloat16: bool = False,
    flags: Iterable[str] | None = None,
    measure: Callable[[], float] | None = None,
) -> DtypeChoice:
    """The serving dtype and the reason. An explicit dtype is used as given. `auto`: float16 on CUDA (ROCm too) and
    MPS, as Stability runs its models on GPUs; on the CPU, bfloat16 for a family that runs in it (`cpu_bfloat16`)
    when the CPU has native bfloat16 matmuls (`flags`: /proc/cpuinfo's unless given) and `measure()` (the
    bfloat16-over-float32 GEMM speed-up; `bf16_gemm_speedup` unless given) says they are at least
    `AUTO_BF16_MIN_SPEEDUP` faster; else float32."""
    if requested != "auto":
        dtype = getattr(torch, requested)
        reason = f"STABLE_AUDIO_DTYPE={requested}"
        if device == "cpu" and dtype == torch.float16:
            reason += " (float16 matmuls are slow on CPUs: bfloat16 or float32 serve faster)"
        return DtypeChoice(dtype, reason)
    if device.startswith("cuda") or device == "mps":
        return DtypeChoice(torch.float16, f"auto: float16 on {device}, as Stability serves its models on GPUs")
    if not cpu_bfloat16:
        return DtypeChoice(torch.float32, "auto: float32 on the CPU (this family is served in float32 there)")
    have = frozenset(cpu_flags() if flags is None else flags)
    native = [f for f in BF16_CPU_FLAGS if f in have]
    if not native:
        return DtypeChoice(
            torch.float32,
            f"auto: float32 on the CPU (no {' or '.join(BF16_CPU_FLAGS)}: bfloat16 matmuls would be emulated)",
        )
    speedup = (measure or bf16_gemm_speedup)()
    measured = f"{'/'.join(native)}; bfloat16 GEMM {speedup:.2f}x float32's, measured at start"
    if speedup >= AUTO_BF16_MIN_SPEEDUP:
        return DtypeChoice(torch.bfloat16, f"auto: bfloat16 on the CPU ({measured})")
    return DtypeChoice(
        torch.float32, f"auto: float32 on the CPU ({measured}, under the {AUTO_BF16_MIN_SPEEDUP}x that pays)"
    )


def pick_dtype(device: str, requested: str = "auto", *, cpu_bfloat16: bool = False) -> torch.dtype:
    """`choose_dtype`'s dtype alone, for callers that do not log the reason."""
    return choose_dtype(device, requested, cpu_bfloat16=cpu_bfloat16).dtype


def _how_to_get(source: str) -> str:
    return (
        f"To get weights: accept the licence at https://huggingface.co/{source}, then "
        f"`HF_TOKEN=... huggingface-cli download {source} --local-dir {DEFAULT_LOCAL_MODEL}`, or point "
        f"STABLE_AUDIO_MODEL / --model at a model directory. To try the service without weights: "
        f"`stable-audio-service make-tiny /tmp/tiny` and --model /tmp/tiny."
    )


def _family_of(path: Path) -> Family:
    family = registry.detect_family(path) if path.is_dir() else None
    if family is None:
        raise ModelLoadError(f"{path} holds no model this service knows. Expected {registry.layouts()}.")
    return family


def resolve_source(source: str) -> Path:
    """A local directory as is; a hub id through the HF cache, downloading only if it is missing."""
    path = Path(source).expanduser()
    if path.exists():
        _family_of(path)
        return path
    if source.startswith(("/", ".", "~")) or source.count("/") != 1:
        raise ModelLoadError(f"model directory {source} does not exist (and it is not a hub repo id like owner/name).")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(source))
    except Exception as exc:  # offline, gated, unknown repo: all end the same way for the operator
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"no weights for {source!r}: not in the Hugging Face cache and the hub could not be reached "
            f"({type(exc).__name__}: {reason}).\n"
            f"Looked at: {DEFAULT_LOCAL_MODEL} (studio path), the HF cache, then huggingface.co.\n"
            + _how_to_get(source)
        ) from None


def read_family(path: Path) -> str:
    """The family name of the model in `path` (`open-1.0`, `sa3`, ...): the CLI checks a model before serving."""
    return _family_of(path).name


@dataclass
class MemoryEstimate:
    """What the memory check found, in bytes; logged at start-up and shown when it refuses."""

    needed: int
    available: int
    weights: int
    working: int  # every request of a full batch at the longest clip
    where: str
    adapters: int = 0  # the LoRA cache's bound, when adapters are served

    @property
    def ok(self) -> bool:
        return self.needed <= self.available


def available_memory(device: str) -> tuple[int, str]:
    """What the whole device has free, not just this process (other services share the box)."""
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info()
        return int(free), "GPU free (device-wide, torch.cuda.mem_get_info)"
    import psutil

    if device == "mps":
        return int(psutil.virtual_memory().available), "unified memory available"
    return int(psutil.virtual_memory().available), "RAM available"


def estimate_memory(
    path: Path,
    device: str,
    dtype: torch.dtype,
    max_seconds: float,
    *,
    batch: int = 1,
    adapters_bytes: int = 0,
) -> MemoryEstimate:
    """Weights at the serving dtype (from the safetensors headers), the family's working memory for a full
    batch (`batch` requests) of the longest allowed clip and the adapter cache's bound, against what the
    device has free. A request's own share is the family's working memory at that clip less its fixed part
    (the working memory of an empty clip: allocator slack and the like), counted once."""
    family = _family_of(path)
    weights, one = family.footprint(path, dtype, max_seconds)
    fixed = min(one, family.footprint(path, dtype, 0.0).working)
    working = one + (max(1, batch) - 1) * (one - fixed)
    available, where = available_memory(device)
    needed = weights + working + adapters_bytes
    return MemoryEstimate(needed, available, weights, working, where, adapters_bytes)


@dataclass
class LoadedInfo:
    """Where the loaded model came from and what loading it took, for /health, /models and the logs."""

    source: str
    path: Path
    family: str
    memory: MemoryEstimate | None
    seconds: float
    dtype_reason: str = ""  # why the model is served in its dtype (`choose_dtype`)


def load_model(settings: Settings) -> tuple[AudioModel, LoadedInfo]:
    """Resolve, check and load, through the family that recognises the files; every failure is a
    `ModelLoadError` whose message an operator can act on."""
    started = time.perf_counter()
    source = settings.resolved_model()
    path = resolve_source(source)
    family = _family_of(path)
    device = pick_device(settings.device)
    choice = choose_dtype(device, settings.dtype, cpu_bfloat16=family.cpu_bfloat16)
    dtype = choice.dtype
    log.info("dtype: %s on %s (%s)", choice.name, device, choice.reason)
    name = source if source != str(DEFAULT_LOCAL_MODEL) else DEFAULT_HUB_MODEL
    memory = None
    if not settings.skip_memory_check:
        memory = estimate_memory(
            path,
            device,
            dtype,
            family.longest_clip(path, settings),
            batch=settings.max_batch_size,
            adapters_bytes=int(settings.lora_cache_mb * MIB) if settings.lora_dir else 0,
        )
        parts = f"weights {memory.weights / GIB:.2f} + working {memory.working / GIB:.2f}"
        parts += f" for a batch of {settings.max_batch_size}"
        if memory.adapters:
            parts += f" + adapter cache {memory.adapters / GIB:.2f}"
        log.info(
            "memory: need %.2f GiB (%s), %s %.2f GiB",
            memory.needed / GIB,
            parts,
            memory.where,
            memory.available / GIB,
        )
        if not memory.ok:
            raise ModelLoadError(
                f"not enough memory on {device} for {source}: needs about {memory.needed / GIB:.2f} GiB "
                f"({parts}), "
                f"{memory.where}: {memory.available / GIB:.2f} GiB. "
                f"Free memory, use a smaller dtype, lower STABLE_AUDIO_MAX_BATCH_SIZE or STABLE_AUDIO_MAX_DURATION, "
                f"or set STABLE_AUDIO_SKIP_MEMORY_CHECK=1 to try anyway."
            )
    try:
        with _LOAD_LOCK:
            model = family.load(LoadRequest(path=path, name=name, device=device, dtype=dtype, settings=settings))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"loading {path} failed: {type(exc).__name__}: {exc}") from exc
    return model, LoadedInfo(source, path, family.name, memory, time.perf_counter() - started, choice.reason)
