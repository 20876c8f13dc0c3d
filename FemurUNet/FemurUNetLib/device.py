"""Device and precision policy, shared by inference, training and the benchmark: which device, which autocast
dtype (bf16/fp16 only where the hardware is fast at it), and the autocast context."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from .errors import FemurUNetError


def pick_device(name: str = "auto") -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FemurUNetError(f"device {name!r}: CUDA is not available to this PyTorch ({torch.__version__})")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise FemurUNetError("device 'mps': Apple Metal is not available to this PyTorch")
    try:
        return torch.device(name)
    except RuntimeError:
        raise FemurUNetError(f"device {name!r}: unknown (use auto, cpu, cuda, cuda:N or mps)") from None


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 dot products (AVX512-BF16 / AMX): there bf16 autocast is a speed-up."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and _cpu_flags() & {"avx512_bf16", "amx_bf16"} != set()
    except (AttributeError, RuntimeError):
        return False


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def autocast_dtype(device: torch.device, enabled=True) -> Optional[torch.dtype]:
    """``enabled``: False (fp32), True (the device's best half precision) or a ``torch.dtype`` to force."""
    if isinstance(enabled, torch.dtype):
        return None if enabled == torch.float32 else enabled
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` to ``dtype`` on the device, or no-op when ``dtype`` is None (fp32)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)
