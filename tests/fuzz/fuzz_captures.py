"""Mutational fuzzing of captures: every mutation of small valid captures (pcap and pcapng;
Ethernet, Linux cooked SLL/SLL2, raw IP; micro- and nanosecond) and of every file in
tests/corpus/captures/ is replayed in-process, as 'mmr replay FILE --out DIR --flows CSV'
does, and must end in a summary or in one UserError of one sentence, within a second;
nothing else may escape (a traceback, a hang, a several-line error).  Every input that
starts like a classic pcap is also walked by the compiled walker replay uses
(engine._pcapwalk) and by its reference (engine/ref/pcapwalk.py), for a random link type,
batch and buffer size: the batches (frames, offsets, lengths, times), the counts and where
and why each stopped must be the same ("mismatch" is a failure like any other).

    python3 tests/fuzz/fuzz_captures.py SECONDS [SEED]     # prints one JSON line of counts

A failing input is written to tests/corpus/captures/crash-<n>.pcap (commit it: it becomes a
regression case, run by tests/test_captures.py)."""
import io
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

from engine import _pcapwalk  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.ref import pcapwalk as ref_pcapwalk  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.replay import CorruptCapture, Replay, format_summary  # noqa: E402
from mutate import mutate  # noqa: E402

SLOW_S = 1.0
CORPUS = os.path.join(HERE, "..", "corpus", "captures")
# values that sit on the edges of the fields a capture reader trusts: lengths, times, magics
U32S = [0, 1, 2, 11, 12, 13, 15, 16, 20, 24, 28, 60, 1499, 1500, 1514, 65535, 65536, 262144, 262145,
        999_999, 1_000_000, 2**31 - 1, 2**31, 2**32 - 1, 16 * 1024 * 1024, 16 * 1024 * 1024 + 4,
        0xA1B2C3D4, 0xD4C3B2A1, 0xA1B23C4D, 0x0A0D0D0A, 0x1A2B3C4D, 1, 6, 113, 276, 101, 228, 229]


def _pcap(records, linktype=1, magic=0xA1B2C3D4, snaplen=65535):
    out = [struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for i, data in enumerate(records):
        out.append(struct.pack("<IIII", 1_700_000_000 + i, 1000 * i, len(data), len(data)) + data)
    return b"".join(out)


def seeds() -> list[bytes]:
    """Small valid captures of every kind mmr replays, built from a few synth frames."""
    import dpkt

    from engine.synth import generate

    tmp = tempfile.mkdtemp(prefix="mmr-fuzz-seed-")
    try:
        path = os.path.join(tmp, "s.pcap")
        generate(path, packets=12, flows=6, seed=5, ipv4_share=0.3)
        with open(path, "rb") as f:
            frames = [bytes(b) for _, b in dpkt.pcap.Reader(f)]
    finally:
        shutil.rmtree(tmp)
    frames.append(bytes(6) + bytes(6) + b"\x08\x06" + bytes(28))       # ARP: not IP
    sll = [struct.pack("!HHH", 0, 1, 6) + f[6:12] + b"\0\0" + f[12:] for f in frames]
    sll2 = [f[12:14] + b"\0\0" + struct.pack("!IHBB", 2, 1, 0, 6) + f[6:12] + b"\0\0" + f[14:] for f in frames]
    raw = [f[14:] for f in frames]
    out = [_pcap(frames), _pcap(frames, magic=0xA1B23C4D), _pcap(sll, 113), _pcap(sll2, 276),
           _pcap(raw, 101), _pcap(raw, 12), _pcap(raw[:4], 229)]
    for linktype, recs in ((1, frames), (113, sll)):
        buf = io.BytesIO()
        w = dpkt.pcapng.Writer(buf, linktype=linktype)
        for i, f in enumerate(recs):
            w.writepkt(f, ts=1.7e9 + i * 0.001)
        out.append(buf.getvalue())
    return out


def mutate_capture(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        i = rng.randrange(len(b) + 1)
        if op <= 1 and len(b) >= 4:                  # a field set to an edge value (either order)
            j = rng.randrange(len(b) - 3) & ~(0 if rng.random() < 0.3 else 3)
            b[j:j + 4] = struct.pack(rng.choice("<>") + "I", rng.choice(U32S))
        elif op == 2 and b:                           # a byte
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 3:                                 # cut short
            del b[i:]
        elif op == 4 and b:                           # delete or duplicate a run
            if rng.random() < 0.5:
                del b[i:i + rng.randint(1, 64)]
            else:
                j = rng.randrange(len(b))
                b[i:i] = b[j:j + rng.randint(1, 128)]
        elif op == 5:                                 # splice the tail of another capture
            other = rng.choice(pool)
            b[i:] = other[rng.randrange(len(other) + 1):]
        else:                                         # the text mutator's tokens and digits
            b = bytearray(mutate(bytes(b), rng, 1))
    return bytes(b)


PCAP_MAGICS = {struct.pack("<I", m) for m in ref_pcapwalk.MAGICS}
DLTS = (1, 113, 276, 12, 14, 101, 228, 229)
ARRAY_TYPES = (np.int64, np.uint32, np.int64, np.int64, np.uint32, np.int64, np.int64, np.float64)


def walk_all(cls, data, dlt: int, batch: int, room: int):
    """Every batch a walker gives over ``data`` (frames as bytes, the arrays as lists) and
    its state at the end; AssertionError if it does not end within one call per record."""
    w = cls(data, dlt)
    buf = np.empty(room, np.uint8)
    arrays = [np.empty(batch, t) for t in ARRAY_TYPES]
    batches = []
    for _ in range(len(data) // 16 + 3):
        n = w.next_batch(buf, *arrays)
        if n == 0:
            break
        off, ln = arrays[0][:n].tolist(), arrays[1][:n].tolist()
        assert all(0 <= o and o + k <= room for o, k in zip(off, ln))
        frames = [bytes(buf[o:o + k]) for o, k in zip(off, ln)]
        batches.append((frames,) + tuple(a[:n].tolist() for a in arrays))
    else:
        raise AssertionError(f"{cls.__module__}: the walk did not end")
    state = (w.kind, w.at, w.error, w.packets, w.usec_carried, w.out_of_range, w.done)
    w.release()
    return batches, state


def walkers_agree(data: bytes, dlt: int, batch: int, room: int = _pcapwalk.FRAME_ROOM):
    """The compiled walker and its reference give the same batches and end the same way
    (or both refuse the bytes as not a pcap); returns the reference's state."""
    try:
        want = walk_all(ref_pcapwalk.PcapWalk, data, dlt, batch, room)
    except ValueError as exc:
        try:
            walk_all(_pcapwalk.PcapWalk, data, dlt, batch, room)
        except ValueError as got:
            assert str(got) == str(exc), (got, exc)
            return None
        raise AssertionError(f"the reference refused it ({exc}), the compiled walker did not")
    got = walk_all(_pcapwalk.PcapWalk, data, dlt, batch, room)
    if got != want:
        raise AssertionError(f"mismatch with the reference walker: {got[1]} vs {want[1]}, "
                             f"{len(got[0])} vs {len(want[0])} batches")
    return want[1]


def check(data: bytes, workdir: str, cfg, batch: int, counts=None) -> str:
    if data[:4] in PCAP_MAGICS:
        r = random.Random(data)
        walkers_agree(data, r.choice(DLTS), batch,
                      r.choice((_pcapwalk.FRAME_ROOM, _pcapwalk.FRAME_ROOM + 1000, 1 << 20)))
        if counts is not None:
            counts["walked"] += 1
    path = os.path.join(workdir, "in.pcap")
    with open(path, "wb") as f:
        f.write(data)
    out = os.path.join(workdir, "out")
    t = time.perf_counter()
    try:
        s = Replay(path, cfg, batch=batch, out_dir=out, flows_csv=os.path.join(workdir, "flows.csv"),
                   progress=False).run()
        format_summary(s, path)
        json.dumps(s)
        result = "summary"
    except CorruptCapture as exc:
        format_summary(exc.summary, path)
        json.dumps(exc.summary)
        result = "corrupt"
        message = str(exc)
    except UserError as exc:
        result = "user-error"
        message = str(exc)
    if result != "summary" and ("\n" in message or not message or len(message) > 600):
        raise AssertionError(f"an error that is not one sentence: {message!r}")
    if time.perf_counter() - t > SLOW_S:
        raise AssertionError(f"took {time.perf_counter() - t:.1f} s")
    return result


def main(seconds: float, seed: int = 1) -> int:
    pool = seeds()
    pool += [open(os.path.join(CORPUS, f), "rb").read() for f in sorted(os.listdir(CORPUS))
             if os.path.isfile(os.path.join(CORPUS, f))]
    cfg = load_config(None)
    cfg.flow_capacity = 256            # small: eviction happens, and a Pipeline is quick to build
    rng = random.Random(seed)
    counts = {"inputs": 0, "summary": 0, "corrupt": 0, "user-error": 0, "failures": 0,
              "walked": 0}
    workdir = tempfile.mkdtemp(prefix="mmr-fuzz-captures-")
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            data = mutate_capture(rng.choice(pool), rng, pool)
            counts["inputs"] += 1
            try:
                counts[check(data, workdir, cfg, rng.choice((1, 3, 64, 256)), counts)] += 1
            except Exception as exc:             # anything else is a bug: keep the input
                counts["failures"] += 1
                n = 1
                while os.path.exists(os.path.join(CORPUS, f"crash-{n}.pcap")):
                    n += 1
                path = os.path.join(CORPUS, f"crash-{n}.pcap")
                with open(path, "wb") as f:
                    f.write(data)
                print(f"{type(exc).__name__}: {exc}; input saved as {path}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(counts))
    return 1 if counts["failures"] else 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1))
