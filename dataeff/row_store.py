"""Where exact CoS-Low keeps the per-example gradient rows of one pass until the Gram matrix is formed.

A :class:`RowStore` holds one ``(n, size)`` fp32 matrix per column slice, in device memory
(``"memory"``), in (pinned) host memory (``"host"``, CUDA) or in temporary files (``"disk"``). Rows are
written at their row positions, so a batch redone after an out-of-memory error overwrites its own
rows, and read back in row chunks.

On disk, each slice is one temporary file opened once; blocks are written from their own buffers
(``pwrite``, no intermediate copy) and read back into one array per chunk (``preadv``). The files
live in the page cache while there is memory to spare, so "disk" costs a copy, not disk I/O, and
the rows are not the process's memory. (Writing from a background thread to overlap the backward
pass was measured on 2 CPU cores: no gain, as both cores are busy with the backward pass.)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np
import torch

ROW_STORES = ("memory", "host", "disk")


class RowStore:
    """The rows of one pass: one ``(n, sizes[i])`` fp32 matrix per column slice ``i``.

    Args:
        n: rows (examples).
        sizes: columns of each slice.
        kind: one of :data:`ROW_STORES`.
        device: device of the rows for ``"memory"``; the device they come from for ``"host"`` (pinned
            when CUDA) and ``"disk"``.
    """

    def __init__(self, n: int, sizes: Sequence[int], kind: str, device: torch.device):
        if kind not in ROW_STORES:
            raise ValueError(f"unknown row store {kind!r}: choose one of {', '.join(ROW_STORES)}")
        self.n, self.sizes, self.kind, self.device = n, [int(s) for s in sizes], kind, device
        self.buffers: list[torch.Tensor] = []
        self.spill: tempfile.TemporaryDirectory | None = None
        self.fds: list[int] = []
        if kind == "memory":
            self.buffers = [torch.empty((n, s), dtype=torch.float32, device=device) for s in self.sizes]
        elif kind == "host":
            pin = device.type == "cuda"
            self.buffers = [self._host_buffer(n, s, pin) for s in self.sizes]
        else:
            self.spill = tempfile.TemporaryDirectory(prefix="dataeff-grads-")
            try:
                for index, s in enumerate(self.sizes):
                    path = os.path.join(self.spill.name, f"slice-{index:05d}.f32")
                    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                    self.fds.append(fd)
                    os.ftruncate(fd, n * s * 4)
            except BaseException:
                self.close()
                raise

    @staticmethod
    def _host_buffer(n: int, size: int, pin: bool) -> torch.Tensor:
        if pin:
            try:
                return torch.empty((n, size), dtype=torch.float32, pin_memory=True)
            except RuntimeError:  # pinning can fail for very large buffers; pageable memory still works
                pass
        return torch.empty((n, size), dtype=torch.float32)

    def write(self, index: int, start: int, block: torch.Tensor) -> None:
        """Rows ``start : start + len(block)`` of slice ``index`` (``block``: ``(rows, sizes[index])``)."""
        stop = start + block.shape[0]
        if self.kind == "memory":
            self.buffers[index][start:stop] = block
        elif self.kind == "host":
            self.buffers[index][start:stop].copy_(block, non_blocking=block.device.type == "cuda")
        else:
            data = block.detach().to("cpu", torch.float32).contiguous().numpy()
            _pwrite_all(self.fds[index], data, start * self.sizes[index] * 4)

    def read(self, index: int, start: int, stop: int, device: torch.device) -> torch.Tensor:
        """Rows ``start:stop`` of slice ``index`` as an fp32 tensor on ``device``."""
        if self.kind in ("memory", "host"):
            return self.buffers[index][start:stop].to(device)
        size = self.sizes[index]
        rows = np.empty((stop - start, size), dtype=np.float32)
        view = rows.data.cast("B")
        done = 0
        while done < rows.nbytes:
            got = os.preadv(self.fds[index], [view[done:]], start * size * 4 + done)
            if got <= 0:
                raise OSError(f"short read of gradient rows from {self.spill.name if self.spill else '?'}")
            done += got
        return torch.from_numpy(rows).to(device)

    def add_gram(self, gram: torch.Tensor, chunk_bytes: int) -> None:
        """``gram += X X^T`` for every slice's rows ``X``, in fp32 products summed in fp64, reading at most
        about ``chunk_bytes`` of rows at a time (pairs of row chunks when a slice does not fit)."""
        if self.kind == "host" and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # non-blocking copies into pinned memory are done
        n = self.n
        for index, size in enumerate(self.sizes):
            rows = max(1, int(chunk_bytes) // (2 * 4 * max(size, 1)))
            if rows >= n:
                x = self.read(index, 0, n, gram.device)
                gram += (x @ x.T).double()
                continue
            bounds = [(a, min(n, a + rows)) for a in range(0, n, rows)]
            for bi, (a0, a1) in enumerate(bounds):
                xa = self.read(index, a0, a1, gram.device)
                gram[a0:a1, a0:a1] += (xa @ xa.T).double()
                for b0, b1 in bounds[bi + 1 :]:
                    xb = self.read(index, b0, b1, gram.device)
                    cross = (xa @ xb.T).double()
                    gram[a0:a1, b0:b1] += cross
                    gram[b0:b1, a0:a1] += cross.T

    def close(self) -> None:
        """Free the rows: close and delete the files."""
        self.buffers = []
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        if self.spill is not None:
            self.spill.cleanup()
            self.spill = None


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    """Write all of ``data``'s bytes at ``offset`` (``pwrite`` may write fewer bytes than asked)."""
    view = data.data.cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
