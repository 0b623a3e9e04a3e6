"""Rewrite: compiled engine._rewrite against the per-frame reference (engine/ref/rewrite.py)."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import _parse, _rewrite
from engine import constants as C
from engine.frames import pack_frames
from engine.ref.rewrite import ipv4_checksum, rewrite_frame
from framegen import valid_frame

MACS_SRC = np.array([[2, 0, 0, 0, 0, k] for k in range(1, 4)], np.uint8)
MACS_DST = np.array([[2, 0, 0, 0, 1, k] for k in range(1, 4)], np.uint8)


def test_compiled_rewrite_is_loaded():
    assert _rewrite.__file__.endswith(".so")


@settings(max_examples=300, deadline=None)
@given(st.lists(valid_frame(), min_size=1, max_size=20), st.data())
def test_compiled_matches_reference(frames, data):
    buf, off, ln = pack_frames(frames)
    buf = np.array(buf, np.uint8)            # writable: rewrite works in place
    n = len(frames)
    rows = np.zeros(n, C.ROW_DTYPE)
    _parse.parse_batch(buf, off, ln, rows, 0x3E, np.zeros(C.N_REASONS, np.uint64))
    ok = rows["reason"] == 0
    src = np.array([data.draw(st.integers(0, 2)) if ok[i] else -1 for i in range(n)], np.int16)
    dst = np.array([data.draw(st.integers(0, 2)) for _ in range(n)], np.int16)
    verdict = np.zeros(n, np.uint8)
    off2, ln2 = off.copy(), ln.copy()
    hop = _rewrite.rewrite(buf, off2, ln2, rows, src, MACS_SRC, dst, MACS_DST, verdict, n)
    assert hop == int((verdict == 1).sum())
    for i in range(n):
        if src[i] < 0:
            assert verdict[i] == 0 and bytes(buf[off2[i]:off2[i] + ln2[i]]) == frames[i]
            continue
        want, v = rewrite_frame(frames[i], rows[i], bytes(MACS_SRC[src[i]]), bytes(MACS_DST[dst[i]]))
        assert verdict[i] == v
        got = bytes(buf[off2[i]:off2[i] + ln2[i]])
        if v == 0:
            assert got == want
            if rows[i]["family"] == 4:       # the incremental checksum equals a full recount
                ihl = (got[14] & 0x0F) * 4
                assert int.from_bytes(got[24:26], "big") == ipv4_checksum(got[14:14 + ihl])
        else:
            assert got == frames[i]          # left alone for the time exceeded answer
