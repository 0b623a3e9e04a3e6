"""Every compiled entry point checks its arguments once per batch: offsets and lengths inside
the buffer (no overflow near 2**63), arrays that cover n, indices in range; a caller's
mistake is a clear exception, never a read or write outside the memory it was given."""
import numpy as np
import pytest

import framegen as g
from engine import _classify, _flowbase, _forward, _parse, _pipeline, _rewrite, _select
from engine import constants as C
from engine.config import load_config
from engine.frames import pack_frames

CFG = load_config(None)
FRAMES = [g.eth(g.ipv6(g.udp(), 17)), g.tagged_udp()]
HUGE = np.int64(2**63 - 8)


def batch():
    buf, off, ln = pack_frames(FRAMES)
    return np.array(buf, np.uint8), off.copy(), ln.copy()


@pytest.mark.parametrize("bad", [
    lambda off, ln: (np.array([HUGE, 0], np.int64), ln),                   # offset + length wraps
    lambda off, ln: (np.array([-1, 0], np.int64), ln),
    lambda off, ln: (off, np.array([0xFFFFFFFF, 10], np.uint32)),          # length past the end
    lambda off, ln: (off, ln[:1]),                                         # arrays of other sizes
], ids=["offset-near-2**63", "negative-offset", "length-past-end", "short-lengths"])
def test_frame_windows_are_checked(bad):
    buf, off, ln = batch()
    off, ln = bad(off, ln)
    rows = np.zeros(2, C.ROW_DTYPE)
    with pytest.raises(ValueError):
        _parse.parse_batch(buf, off, ln, rows, 0x3E, None)
    with pytest.raises(ValueError):
        _pipeline.Pipeline(CFG).process(buf, off, ln, np.zeros(2))
    fw = _forward.Forwarder(_pipeline.Pipeline(CFG), True, 2, 8)
    with pytest.raises(ValueError):
        fw.outbound(buf, off, ln)
    with pytest.raises(ValueError):
        fw.inbound(0, buf, off, ln)
    if len(ln) == 2:
        src = np.zeros(2, np.int16)
        macs = np.zeros((1, 6), np.uint8)
        with pytest.raises(ValueError):
            _rewrite.rewrite(buf, off, ln, rows, src, macs, src.copy(), macs, np.zeros(2, np.uint8), 2)


def test_arrays_must_cover_n():
    buf, off, ln = batch()
    rows = np.zeros(2, C.ROW_DTYPE)
    _parse.parse_batch(buf, off, ln, rows, 0x3E, None)
    with pytest.raises(ValueError):
        _parse.parse_batch(buf, off, ln, np.zeros(1, C.ROW_DTYPE), 0x3E, None)
    with pytest.raises(ValueError):
        _classify.Classifier(CFG).classify(rows, np.zeros(1, np.uint8), np.zeros(2, np.uint16), 2)
    with pytest.raises(ValueError):
        _select.Selector(CFG).select(np.zeros(2, np.uint8), np.zeros(1, np.uint16), np.zeros(2, np.int16), 2)
    ft = _flowbase.FlowTable(16)
    with pytest.raises(ValueError):
        ft.lookup(rows, np.zeros(1), np.full(2, -1, np.int16), 2)
    with pytest.raises(IndexError):
        ft.key_hash(rows, -5)
    with pytest.raises(ValueError):
        _rewrite.rewrite(buf, off, ln, rows, np.zeros(2, np.int16), np.zeros((1, 6), np.uint8),
                         np.array([0, 5], np.int16), np.zeros((1, 6), np.uint8), np.zeros(2, np.uint8), 2)
    with pytest.raises(TypeError):
        _parse.parse_batch(buf, off, ln, np.zeros(2, np.uint8), 0x3E, None)     # not rows


def test_forwarder_tables_and_indices_are_checked():
    fw = _forward.Forwarder(_pipeline.Pipeline(CFG), True, 2, 8)
    with pytest.raises(ValueError):
        fw.inbound(5, *batch())
    with pytest.raises(ValueError):
        fw.detach_uplink(-1)
    with pytest.raises(ValueError):
        fw.set_kernel_prefixes([(bytes(16), bytes(16))] * 257)
    with pytest.raises(ValueError):
        fw.attach(up_rx=[None])                 # one ring for two uplinks
    with pytest.raises(ValueError):
        fw.outbound(*batch()[:1], np.zeros(9, np.int64), np.zeros(9, np.uint32))   # > the batch size
