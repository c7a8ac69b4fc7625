"""Arithmetic whose float32 result must not depend on the CPU's kernels.

`torch.linspace` on the CPU computes each point as `start + step * i` (before the midpoint; `end - step * (n-1-i)`
after it). The AVX2 and AVX-512 kernels contract that into one fused multiply-add, the portable kernel
(`ATEN_CPU_CAPABILITY=default`, and CPUs without those units) rounds twice, so one point in ~four moves by one ulp.
In the Fourier features of the DiT's timestep and the duration conditioner, that ulp is multiplied by frequencies
up to 2*pi*10000: the features move by up to 1e-2, and the whole generation follows. Stability's reference outputs
were made by the fused form on AVX2 and AVX-512 hosts, so this module computes the fused form on every host.
"""

from __future__ import annotations

import numpy as np
import torch


def linspace(start: float, end: float, steps: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """float32 `torch.linspace(start, end, steps)` exactly as the AVX2/AVX-512 kernels compute it, on any CPU.

    Each point is one correctly rounded `fma(step, i, start)` (or `fma(-step, n-1-i, end)` past the midpoint),
    evaluated in float64 where the product and the sum of these float32 operands are exact."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    first, last = np.float32(start), np.float32(end)
    if steps == 1:
        return torch.tensor([first], dtype=torch.float32, device=device)
    step = np.float32(np.float32(last - first) / np.float32(steps - 1))
    i = np.arange(steps, dtype=np.float64)
    head = np.float64(step) * i + np.float64(first)
    tail = np.float64(last) - np.float64(step) * (steps - 1 - i)
    values = np.where(i < steps // 2, head, tail).astype(np.float32)
    return torch.from_numpy(values).to(device)
