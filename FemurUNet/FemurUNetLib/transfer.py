"""Host <-> device copies of the slice loop.

On CUDA the raw slices (int16 as stored, half the bytes of float32) go up through two reusable pinned buffers on
a copy stream of their own, so the next batch's upload overlaps the current batch's compute; windowing, resizing
and thresholding then run on the device, and only the uint8 labels (and, when asked for, the probabilities) come
back, into reusable pinned buffers, while the next batch computes. Pinning memory once per run instead of once
per batch avoids a page-locking call per batch. Elsewhere (CPU, MPS) a slab is handed over as it is.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch


class SliceTransfer:
    """``upload(slab)`` -> tensor for the model; ``download(name, t)`` -> (host tensor, CUDA event | None).

    ``staged`` (default: on CUDA) uses the reusable buffers; an uploaded tensor stays valid until the upload after
    the next one, a downloaded one until the download after the next one of the same name."""

    def __init__(self, device: torch.device, staged: Optional[bool] = None):
        self.device = device
        self.cuda = device.type == "cuda"
        self.staged = self.cuda if staged is None else staged
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self._buffers: dict = {}          # (direction/name, turn) -> host tensor
        self._events: dict = {}           # (direction/name, turn) -> the CUDA event of the copy that used it
        self._turns: dict = {}

    def _buffer(self, name: str, shape, dtype: torch.dtype) -> tuple:
        turn = self._turns[name] = 1 - self._turns.get(name, 1)
        key = (name, turn)
        event = self._events.pop(key, None)
        if event is not None:
            event.synchronize()                          # the copy that last used this buffer is done
        buf = self._buffers.get(key)
        if buf is None or buf.dtype != dtype or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
            buf = self._buffers[key] = torch.empty(tuple(shape), dtype=dtype, pin_memory=self.cuda)
        return buf[:shape[0]], key

    def upload(self, slab: np.ndarray) -> torch.Tensor:
        if not self.staged:
            return torch.from_numpy(np.ascontiguousarray(slab))
        host, key = self._buffer("up", slab.shape, torch.from_numpy(np.empty(0, slab.dtype)).dtype)
        host.numpy()[...] = slab
        if not self.cuda:
            return host
        with torch.cuda.stream(self.stream):
            on_device = host.to(self.device, non_blocking=True)
            self._events[key] = torch.cuda.Event()
            self._events[key].record(self.stream)
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self.stream)
        on_device.record_stream(compute)
        return on_device

    def download(self, name: str, t: Optional[torch.Tensor]):
        if t is None:
            return None
        if t.device.type != "cuda":
            return t.cpu(), None
        host, key = self._buffer(name, t.shape, t.dtype)
        host.copy_(t, non_blocking=True)
        event = self._events[key] = torch.cuda.Event()
        event.record()
        return host, event
