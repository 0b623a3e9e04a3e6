"""The capture walker replay uses (engine._pcapwalk, pyx/pcapwalk.pyx) against its reference
(engine/ref/pcapwalk.py) on generated and mutated pcap bytes, and the reference against
libpcap (pcapy-ng), which replay read with before: the same records, times and stop."""
import io
import os
import random
import struct
import sys
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "fuzz"))

import framegen as g  # noqa: E402
from fuzz_captures import DLTS, U32S, mutate_capture, walk_all, walkers_agree  # noqa: E402

import engine.replay  # noqa: E402
from engine import _pcapwalk  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.ref import pcapwalk as ref  # noqa: E402
from engine.replay import Replay  # noqa: E402

MAGICS = sorted(ref.MAGICS)


def test_replay_uses_the_compiled_walker(tmp_path, monkeypatch):
    assert engine.replay.PcapWalk is _pcapwalk.PcapWalk
    assert _pcapwalk.__file__.endswith(".so")
    path = tmp_path / "x.pcap"
    path.write_bytes(pcap([(1, 0, g.tagged_udp(sport=s)) for s in range(5)]))
    seen = []
    walk = Replay.walk

    def spy(self, walker):
        seen.append(type(walker))
        return walk(self, walker)

    def no_pcapy(self, reader):
        raise AssertionError("a pcap was read record by record with pcapy")

    monkeypatch.setattr(Replay, "walk", spy)
    monkeypatch.setattr(Replay, "batches", no_pcapy)
    s = Replay(str(path), load_config(None), progress=False).run()
    assert s["packets"] == 5 and seen == [_pcapwalk.PcapWalk]


def pcap(recs, linktype=1, magic=0xA1B2C3D4, snaplen=65535, version=(2, 4), order="<", rec_hdr=16):
    """A pcap of (sec, frac, data) or (sec, frac, caplen, wire, data) records."""
    out = [struct.pack(order + "IHHiIII", magic, version[0], version[1], 0, 0, snaplen, linktype)]
    for r in recs:
        sec, frac, cap, wire, data = r if len(r) == 5 else (r[0], r[1], len(r[2]), len(r[2]), r[2])
        out.append(struct.pack(order + "IIII", sec, frac, cap, wire) + bytes(rec_hdr - 16) + data)
    return b"".join(out)


u32 = st.integers(0, 2**32 - 1)
edge32 = st.one_of(u32, st.sampled_from(U32S))
record = st.tuples(edge32, st.one_of(st.integers(0, 999_999), edge32),
                   st.binary(max_size=120))


@st.composite
def captures(draw):
    magic = draw(st.sampled_from(MAGICS))
    order, _, rec_hdr = ref.MAGICS[magic]
    recs = draw(st.lists(record, max_size=12))
    if draw(st.booleans()):        # caplen and wire length that lie
        recs = [(s, f, draw(st.one_of(st.just(len(d)), st.sampled_from(U32S))), draw(edge32), d)
                for s, f, d in recs]
    snaplen = draw(st.one_of(st.just(65535), st.sampled_from((0, 1, 14, 60, 262144, 262145, 2**31))))
    version = draw(st.sampled_from(((2, 4), (2, 4), (2, 3), (2, 2), (1, 0))))
    data = pcap(recs, draw(st.sampled_from(DLTS)), magic if order == "<" else
                struct.unpack(">I", struct.pack("<I", magic))[0], snaplen, version, order, rec_hdr)
    # the magic as written: the byte order of the file decides how it reads little-endian
    if draw(st.booleans()):
        data = mutate_capture(data, random.Random(draw(st.integers(0, 2**32))), [data])
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(captures(), st.sampled_from(DLTS), st.integers(1, 9),
       st.sampled_from((0, 1, 100, 70000)))
def test_compiled_walker_matches_reference(data, dlt, batch, extra_room):
    walkers_agree(data, dlt, batch, _pcapwalk.FRAME_ROOM + extra_room)


def libpcap_records(data):
    """(records, error) libpcap gives for ``data``, or None if it will not open it."""
    import pcapy

    fd, path = tempfile.mkstemp(suffix=".pcap")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            r = pcapy.open_offline(path)
        except pcapy.PcapError:
            return None
        if r.datalink() not in engine.replay.LINK_NAMES:
            return None                 # replay refuses it before reading
        recs = []
        while True:
            try:
                h, d = r.next()
            except pcapy.PcapError as exc:
                return recs, str(exc)
            if h is None:
                return recs, None
            recs.append((bytes(d), h.getlen(), h.getts()))
    finally:
        os.unlink(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(captures())
def test_reference_walker_reads_what_libpcap_reads(data):
    """Same data, wire lengths and times (libpcap's, taken modulo 2**32 and carried as
    replay does), and libpcap's error exactly where the reference stops early."""
    assume(data[:4] in {struct.pack("<I", m) for m in MAGICS})
    lib = libpcap_records(data)
    assume(lib is not None)
    want, error = lib
    nsec = ref.MAGICS[struct.unpack("<I", data[:4])[0]][1]
    batches, (kind, at, err, packets, carried, _, done) = walk_all(ref.PcapWalk, data, 1, 5,
                                                                  ref.FRAME_ROOM)
    got = [r for b in batches for r in zip(b[0], b[3], b[5], b[6], b[7])]
    assert done and packets == len(got) == len(want)
    assert (kind is not None) == (error is not None) and err == (error or "")
    order = ref.MAGICS[struct.unpack("<I", data[:4])[0]][0]
    rec_hdr = ref.MAGICS[struct.unpack("<I", data[:4])[0]][2]
    for (frame, at, wire, sec, usec), (d, length, (lsec, lfrac)) in zip(got, want):
        assert frame == d and wire == length
        if nsec and struct.unpack_from(order + "I", data, at - rec_hdr + 4)[0] >= 2**31:
            continue        # libpcap scaled a fraction of 2**31 ns or more as negative
            # (test_times has what the walker does with it)
        s, u = lsec % 2**32, lfrac % 2**32
        s, u = (s + u // 10**6, u % 10**6) if u >= 10**6 else (s, u)
        assert (sec, usec) == ((s, u) if s <= 2**32 - 1 else (2**32 - 1, 999_999))


def test_stops_where_and_why():
    frame = g.tagged_udp()
    good = pcap([(1, 0, frame)] * 3)
    rec = 16 + len(frame)
    cases = {
        "end": (good, None, -1, 3),
        "cut header": (good[:-rec + 5], "cut", 24 + 2 * rec, 2),
        "cut data": (good[:-3], "cut", 24 + 2 * rec, 2),
        "corrupt": (good[:24 + rec + 8] + struct.pack("<I", 262145) + good[24 + rec + 12:],
                    "corrupt", 24 + rec, 1),
    }
    for name, (data, kind, at, n) in cases.items():
        state = walkers_agree(data, 1, 2)
        assert state[:2] == (kind, at) and state[3] == n, name
    assert "invalid packet capture length 262145" in walkers_agree(cases["corrupt"][0], 1, 2)[2]


def test_link_types_become_ethernet_frames():
    ip6 = g.tagged_udp()[14:]
    for dlt, rec, frame in (
            (1, g.tagged_udp(), g.tagged_udp()),
            (113, struct.pack("!HHH", 0, 1, 6) + bytes(8) + b"\x86\xdd" + ip6,
             struct.pack("!HH", 1, 6) + bytes(8) + b"\x86\xdd" + ip6),
            (276, b"\x86\xdd" + bytes(16) + b"\xaa\xbb" + ip6, bytes(12) + b"\x86\xdd" + ip6),
            (101, ip6, bytes(12) + b"\x86\xdd" + ip6),
            (12, b"\x45" + bytes(19), bytes(12) + b"\x08\x00\x45" + bytes(19)),
            (101, b"\x50" + bytes(19), bytes(14) + b"\x50" + bytes(19)),
            (228, b"\x60" + bytes(19), bytes(12) + b"\x08\x00\x60" + bytes(19)),
            (229, b"", bytes(12) + b"\x86\xdd")):
        data = pcap([(7, 5, rec)], linktype=dlt)
        for cls in (ref.PcapWalk, _pcapwalk.PcapWalk):
            batches, state = walk_all(cls, data, dlt, 4, ref.FRAME_ROOM)
            assert batches[0][0] == [frame], (cls, dlt)
            assert batches[0][3:6] == ([40], [len(rec)], [len(rec)])     # the record, as read
            assert data[40:40 + len(rec)] == rec and state[0] is None


def test_times():
    recs = [(5, 999_999, b"a"), (2**32 - 1, 2_500_000, b"b"), (2**31 + 1, 7, b"c")]
    batches, state = walk_all(_pcapwalk.PcapWalk, pcap(recs), 1, 8, _pcapwalk.FRAME_ROOM)
    assert batches[0][6:9] == ([5, 2**32 - 1, 2**31 + 1], [999_999, 999_999, 7],
                               [5 + 999_999 * 1e-6, 2**32 + 1.5, 2**31 + 1 + 7 * 1e-6])
    assert state[4:6] == (1, 1)                          # one carried, which left the range
    ns = pcap([(1, 2**32 - 1, b"a"), (1, 1_500_000_999, b"b")], magic=0xA1B23C4D)
    batches, state = walk_all(_pcapwalk.PcapWalk, ns, 1, 8, _pcapwalk.FRAME_ROOM)
    assert batches[0][6:8] == ([5, 2], [294_967, 500_000]) and state[4] == 2


def test_snapshot_and_swapped_lengths():
    d = bytes(range(40))
    for snaplen, want in ((10, 10), (0, 40), (300000, 40), (60, 40)):
        batches, _ = walk_all(_pcapwalk.PcapWalk, pcap([(1, 0, d)], snaplen=snaplen), 1, 2,
                              _pcapwalk.FRAME_ROOM)
        assert batches[0][0] == [d[:want]]
    old = pcap([(1, 0, 40, 4, bytes(4))], version=(2, 2))   # lengths swapped: 4 bytes, wire 40
    assert walk_all(_pcapwalk.PcapWalk, old, 1, 2, _pcapwalk.FRAME_ROOM)[0][0][5] == [40]


def test_entry_points_refuse_what_would_leave_their_memory():
    w = _pcapwalk.PcapWalk(pcap([(1, 0, b"abc")]), 1)
    arrays = [np.zeros(4, t) for t in (np.int64, np.uint32, np.int64, np.int64, np.uint32,
                                       np.int64, np.int64, np.float64)]
    buf = np.zeros(_pcapwalk.FRAME_ROOM, np.uint8)
    for k in range(1, 8):
        short = list(arrays)
        short[k] = short[k][:3]
        with pytest.raises(ValueError):
            w.next_batch(buf, *short)
    with pytest.raises(ValueError):
        w.next_batch(buf[:-1], *arrays)
    with pytest.raises((ValueError, TypeError)):
        w.next_batch(buf, arrays[0].astype(np.int32), *arrays[1:])
    for bad in (b"", bytes(23), b"\0" * 24, pcap([])[:23]):
        with pytest.raises(ValueError):
            _pcapwalk.PcapWalk(bad, 1)
    w.release()
    assert w.next_batch(buf, *arrays) == 0
    with pytest.raises(ValueError):
        _pcapwalk.PcapWalk(pcap([(1, 0, b"abc")]), 1).next_batch(None, *arrays)


def test_mapping_is_closed_after_every_ending(tmp_path, monkeypatch):
    """The map of the file is let go whatever ends the replay (no BufferError from
    exported views), and the --out pcaps are written from it."""
    import mmap

    frame = g.tagged_udp()
    good = pcap([(1, 0, frame)] * 50)
    cases = {"ok": good, "cut": good[:-3],
             "corrupt": good[:24 + 8] + struct.pack("<I", 2**31) + good[24 + 12:]}
    closed = []
    real = mmap.mmap

    def spy(*a, **k):
        m = real(*a, **k)
        closed.append(m)
        return m

    for name, data in cases.items():
        path = tmp_path / f"{name}.pcap"
        path.write_bytes(data)
        closed.clear()
        r = Replay(str(path), load_config(None), batch=7, out_dir=str(tmp_path / name),
                   progress=False)
        monkeypatch.setattr(engine.replay.mmap, "mmap", spy)
        try:
            r.run()
        except engine.replay.CorruptCapture:
            assert name == "corrupt"
        monkeypatch.undo()
        assert len(closed) == 1 and closed[0].closed and r.mapped is None, name


def test_a_fifo_is_refused_in_one_sentence(tmp_path):
    fifo = tmp_path / "f.pcap"
    os.mkfifo(fifo)
    from engine.errors import UserError
    with pytest.raises(UserError, match="not a regular file"):
        Replay(str(fifo), load_config(None), progress=False).run()


def test_the_harness_sees_a_mismatch(monkeypatch):
    """walkers_agree (used here and by the capture fuzzer) fails when the walkers differ."""
    import fuzz_captures

    class Off(ref.PcapWalk):
        def next_batch(self, *a):
            n = super().next_batch(*a)
            if n:
                a[7][0] += 1                 # one microsecond off
            return n

    monkeypatch.setattr(fuzz_captures._pcapwalk, "PcapWalk", Off)
    with pytest.raises(AssertionError, match="mismatch"):
        walkers_agree(pcap([(1, 0, b"x")]), 1, 4)


def test_pcapng_is_still_read_by_pcapy(tmp_path, monkeypatch):
    import dpkt

    buf = io.BytesIO()
    w = dpkt.pcapng.Writer(buf)
    for i in range(3):
        w.writepkt(g.tagged_udp(sport=100 + i), ts=10.0 + i)
    path = tmp_path / "x.pcapng"
    path.write_bytes(buf.getvalue())
    monkeypatch.setattr(Replay, "walk", lambda self, w: (_ for _ in ()).throw(AssertionError))
    assert Replay(str(path), load_config(None), progress=False).run()["packets"] == 3


def test_a_failing_out_write_is_not_masked(tmp_path, monkeypatch):
    """A write to an --out pcap that fails (a full disk) ends in that error, not in a
    BufferError from closing the map while a view of it is alive, and the map is closed."""
    path = tmp_path / "x.pcap"
    path.write_bytes(pcap([(1, 0, g.tagged_udp(sport=s)) for s in range(20)]))
    opened = Replay._open_outputs

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    def full_disk(self):
        files = opened(self)
        for w in files:
            w.f = Full(w.f)
        return files

    monkeypatch.setattr(Replay, "_open_outputs", full_disk)
    r = Replay(str(path), load_config(None), batch=8, out_dir=str(tmp_path / "out"), progress=False)
    with pytest.raises(OSError, match="No space left"):
        r.run()
    assert r.mapped is None
