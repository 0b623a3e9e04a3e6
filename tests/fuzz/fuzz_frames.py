"""Coverage-guided fuzzing (atheris, libFuzzer) of the compiled parser and rewrite against
their references.  The references are instrumented: their branches are the parser's
branches, so coverage of them steers the mutations into every header and option path.

    python3 tests/fuzz/fuzz_frames.py -max_total_time=60 -print_final_stats=1 tests/corpus/frames

For each input (four bytes that pick the rewrite's mode, a virtio-net header and whether
unknown hop-by-hop options are acted on (RFC 8200 4.2; not in host mode), then a frame): the
compiled parse_batch row equals the reference's, field by field (opt_off too); for a parsed
frame, the compiled rewrite's verdict equals the reference's, and so do its bytes when no
checksum request is involved (tests/test_rewrite.py compares completed checksums on frames
that carry a real pseudo-header sum).  A mismatch or a crash stops the run with the input
saved by libFuzzer (crash-*)."""
import sys
import os

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

with atheris.instrument_imports(include=["engine.ref"]):
    from engine.ref.parse import parse_frame
    from engine.ref.rewrite import rewrite_frame

import numpy as np  # noqa: E402

from engine import _parse, _rewrite  # noqa: E402
from engine import constants as C  # noqa: E402
from engine.frames import pack_frames  # noqa: E402

FIELDS = [f for f in C.ROW_DTYPE.names if f != "_pad"]
MACS = np.array([[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]], np.uint8)
STATS = {"frames": 0, "parsed": 0, "rewritten": 0}


def check(data: bytes) -> None:
    if len(data) < 4:
        return
    tail, frame = data[:4], data[4:]
    STATS["frames"] += 1
    buf, off, ln = pack_frames([frame])
    buf = np.array(buf, np.uint8)
    rows = np.zeros(1, C.ROW_DTYPE)
    honour = not tail[0] & 4
    _parse.parse_batch(buf, off, ln, rows, 0x3E, None, honour)
    want = parse_frame(frame, 0x3E, honour)
    for f in FIELDS:
        got = bytes(rows[0][f]) if f in ("src", "dst") else int(rows[0][f])
        exp = bytes(want[f]) if f in ("src", "dst") else int(want[f])
        if got != exp:
            raise AssertionError(f"parse: field {f}: compiled {got!r}, reference {exp!r}; frame {frame.hex()}")
    if rows[0]["reason"] != 0:
        return
    STATS["parsed"] += 1
    hop, gso, kind, shift = tail[0] & 1, (tail[0] >> 1) & 1, tail[1] % 3, tail[2]
    v = np.zeros(1, C.VNET_DTYPE)
    l4 = int(rows[0]["l4_off"])
    if kind and l4:                         # a checksum request: at the L4 header, or anywhere
        v[0]["flags"] = 1
        v[0]["csum_start"] = l4 if kind == 1 else (l4 + shift) % 70000 % 65536
        v[0]["csum_offset"] = {6: 16, 17: 6, 58: 2}.get(int(rows[0]["proto"]), tail[3] % 32)
        v[0]["gso_type"] = 4 if gso else 0
        v[0]["gso_size"] = 1000 if gso else 0
    before = v.copy()
    off2, ln2 = off.copy(), ln.copy()
    verdict = np.zeros(1, np.uint8)
    _rewrite.rewrite(buf, off2, ln2, rows, np.zeros(1, np.int16), MACS, np.ones(1, np.int16), MACS, verdict, 1,
                     vnet=v, hop=bool(hop), gso_too=bool(gso))
    exp_frame, exp_v, _ = rewrite_frame(frame, rows[0], bytes(MACS[0]), bytes(MACS[1]), before[0], hop=bool(hop),
                                        gso_too=bool(gso))
    if verdict[0] != exp_v:
        raise AssertionError(f"rewrite verdict {verdict[0]} vs {exp_v}; frame {frame.hex()}")
    STATS["rewritten"] += 1
    # without a checksum request the bytes must be equal; with one, a fuzzed frame's field
    # holds no pseudo-header sum, so completion and the reference's full sum differ by
    # design: the verdict (and that nothing outside the frame was touched) is what counts
    if exp_v == 0 and not kind:
        got = bytes(buf[off2[0]:off2[0] + ln2[0]])
        if got != exp_frame:
            raise AssertionError(f"rewrite bytes differ; frame {frame.hex()}")


def main():
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
