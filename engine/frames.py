"""Batches of frames as the compiled stages take them: one buffer, offsets, lengths."""
from __future__ import annotations

import numpy as np

from engine import constants as C


def pack_frames(frames) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """list of bytes -> (uint8 buffer, int64 offsets, uint32 lengths)."""
    frames = [bytes(f) for f in frames]
    lengths = np.fromiter(map(len, frames), dtype=np.uint32, count=len(frames))
    offsets = np.zeros(len(frames), dtype=np.int64)
    if len(frames) > 1:
        np.cumsum(lengths[:-1], out=offsets[1:])
    buf = np.frombuffer(b"".join(frames), dtype=np.uint8)
    return buf, offsets, lengths


def new_rows(n: int) -> np.ndarray:
    return np.zeros(n, dtype=C.ROW_DTYPE)


def parse_frames(frames, option_type: int = C.DEFAULT_OPTION_TYPE, counters=None) -> np.ndarray:
    """Parse a list of frames with the compiled parser; returns the rows."""
    from engine import _parse

    buf, offsets, lengths = pack_frames(frames)
    rows = new_rows(len(frames))
    _parse.parse_batch(buf, offsets, lengths, rows, option_type, counters)
    return rows
