"""The whole data path: compiled pipeline vs the reference pipeline, and mmr replay."""
import csv
import io
import json
import struct
import subprocess
import sys

import dpkt
import numpy as np
import pytest

import framegen as g
from engine import _classify, _flowbase, _parse, _select
from engine.config import load_config
from engine.frames import pack_frames
from engine.pipeline import Pipeline
from engine.ref.pipeline import RefPipeline
from engine.replay import Replay
from engine.synth import generate


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    p = tmp_path_factory.mktemp("replay") / "mix.pcap"
    generate(str(p), packets=6000, flows=300, seed=11)
    return str(p)


def read(path):
    with open(path, "rb") as f:
        return [(ts, bytes(buf)) for ts, buf in dpkt.pcap.Reader(f)]


def test_pipeline_uses_the_compiled_stages():
    p = Pipeline(load_config(None))
    for mod, obj in ((_classify, p.classifier), (_select, p.selector), (_flowbase, p.flows)):
        assert mod.__file__.endswith(".so") and type(obj).__module__ == mod.__name__
    assert _parse.__file__.endswith(".so")


def test_compiled_pipeline_matches_reference(trace):
    cfg = load_config(None)
    cfg.flow_capacity = 64          # small: eviction happens
    recs = read(trace)
    junk = [b"", g.eth(b"\0" * 30, 0x0806), g.eth(g.ipv6(g.udp(), 17, plen=999))[:70]]
    a, b = Pipeline(cfg), RefPipeline(cfg)
    for start in range(0, 2000, 97):
        chunk = recs[start:start + 97]
        process_both(a, b, [f for _, f in chunk] + junk, [t for t, _ in chunk] + [chunk[-1][0]] * len(junk))
    assert_same_state(a, b)


def process_both(a, b, frames, ts):
    """One batch through pipelines a and b: the same verdict for every frame."""
    buf, off, ln = pack_frames(frames)
    ts = np.array(ts, dtype=np.float64)
    oa = a.process(buf, off, ln, ts).copy()
    ob = b.process(buf, off, ln, ts)
    assert (oa == ob).all()


def assert_same_state(a, b):
    assert (a.reasons == b.reasons).all()
    assert a.flows.dump().tobytes() == b.flows.dump().tobytes()


def test_replay_summary_json(trace):
    p = subprocess.run([sys.executable, "-m", "engine", "replay", trace, "--json"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    for k in ("packets", "bytes", "flows", "uplinks", "classes", "drops", "elapsed_s", "pps"):
        assert k in s
    assert s["packets"] == 6000
    assert set(s["uplinks"]) == {"ar1", "ar2"} and set(s["classes"]) == {"data", "control", "voip", "video"}
    up = s["uplinks"]
    assert sum(u["packets"] for u in up.values()) + sum(s["drops"].values()) + s["kernel"] == 6000
    assert sum(u["flows"] for u in up.values()) == s["flows"] > 0
    assert up["ar1"]["packets"] > 0 and up["ar2"]["packets"] > 0


def test_replay_outputs_split_every_packet(trace, tmp_path):
    out = tmp_path / "split"
    flows = tmp_path / "flows.csv"
    rp = Replay(trace, load_config(None), batch=128, out_dir=str(out), flows_csv=str(flows),
                progress=False)
    s = rp.run()
    written = {name: len(read(out / f"{name}.pcap")) for name in ("ar1", "ar2", "dropped")}
    assert written["ar1"] == s["uplinks"]["ar1"]["packets"]
    assert written["ar2"] == s["uplinks"]["ar2"]["packets"]
    assert written["dropped"] == sum(s["drops"].values())
    with open(flows) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["src", "dst", "proto", "sport", "dport", "service", "preference",
                             "uplink", "packets", "bytes"]
    assert len(rows) == s["flows"]
    assert sum(int(r["packets"]) for r in rows) == sum(u["packets"] for u in s["uplinks"].values())
    assert {r["uplink"] for r in rows} <= {"ar1", "ar2"}
    assert {r["service"] for r in rows} <= {"data", "control", "voip", "video"}
    assert any("." in r["src"] for r in rows) and any(":" in r["src"] for r in rows)


def test_replay_is_deterministic_across_batch_sizes(trace):
    cfg = load_config(None)
    a = Replay(trace, cfg, batch=1, progress=False).run()
    b = Replay(trace, cfg, batch=1000, progress=False).run()
    for k in ("packets", "bytes", "flows", "uplinks", "classes", "drops"):
        assert a[k] == b[k]


def test_expiry_follows_packet_time(tmp_path):
    path = tmp_path / "idle.pcap"
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f)
        frame = g.tagged_udp()
        w.writepkt(frame, ts=100.0)
        w.writepkt(g.tagged_udp(sport=9), ts=101.0)
        w.writepkt(frame, ts=400.0)          # idle > 120 s: a new flow
    s = Replay(str(path), load_config(None), batch=1, progress=False).run()
    assert s["flows"] == 3 and s["flow_events"]["expired"] == 2


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "engine", "replay", *args], capture_output=True, text=True)


def test_bad_inputs_are_one_line_errors(tmp_path):
    p = run_cli(str(tmp_path / "missing.pcap"))
    assert p.returncode == 2 and "no such file" in p.stderr
    notpcap = tmp_path / "x.pcap"
    notpcap.write_text("hello")
    p = run_cli(str(notpcap))
    assert p.returncode == 2 and "not a readable pcap" in p.stderr and str(notpcap) in p.stderr
    wifi = tmp_path / "wifi.pcap"
    wifi.write_bytes(pcap_bytes([(1.0, bytes(40))], linktype=105))    # 802.11
    q = run_cli(str(wifi))
    assert q.returncode == 2 and "link type 105 is not one mmr replays" in q.stderr
    r = run_cli("-")
    assert r.returncode == 2 and "not from standard input" in r.stderr
    for x in (p, q, r):
        assert "Traceback" not in x.stderr and x.stderr.count("\n") == 1


def test_truncated_file_reports_what_it_read(trace, tmp_path):
    data = open(trace, "rb").read()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - 100])
    p = run_cli(str(cut), "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["packets"] == 5999 and s["truncated"]["file_bytes"] == len(data) - 100
    txt = run_cli(str(cut))
    assert "cut short" in txt.stdout


def test_pcapng_is_read(tmp_path):
    path = tmp_path / "x.pcapng"
    with open(path, "wb") as f:
        w = dpkt.pcapng.Writer(f)
        for i in range(5):
            w.writepkt(g.tagged_udp(sport=100 + i), ts=10.0 + i)
    s = Replay(str(path), load_config(None), progress=False).run()
    assert s["packets"] == 5 and s["flows"] == 5 and s["uplinks"]["ar1"]["packets"] == 5


# -- capture formats, written with struct so the reader is tested, not the writer ----------

def pcap_bytes(recs, linktype=1, snaplen=65535, magic=0xA1B2C3D4):
    """A little-endian pcap of (ts, bytes) records; a record may be (sec, usec, bytes)."""
    out = [struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for rec in recs:
        if len(rec) == 2:
            ts, data = rec
            sec, usec = int(ts), round((ts - int(ts)) * 1e6)
        else:
            sec, usec, data = rec
        out.append(struct.pack("<IIII", sec, usec, len(data), len(data)) + data)
    return b"".join(out)


def sll(frame):       # packet type 0 (to us), ARPHRD_ETHER, 6-byte address, protocol
    return struct.pack("!HHH", 0, 1, 6) + frame[6:12] + b"\0\0" + frame[12:14] + frame[14:]


def sll2(frame):      # protocol, reserved, ifindex, ARPHRD_ETHER, packet type, address
    return frame[12:14] + b"\0\0" + struct.pack("!IHBB", 2, 1, 0, 6) + frame[6:12] + b"\xaa\xbb" + frame[14:]


def raw(frame):
    return frame[14:]


def records(path):
    """(link type, [(sec, usec, caplen, wire len, data)]) read with struct."""
    b = open(path, "rb").read()
    assert b[:4] == b"\xd4\xc3\xb2\xa1"
    snaplen, linktype = struct.unpack("<II", b[16:24])
    pos, out = 24, []
    while pos < len(b):
        sec, usec, cap, wire = struct.unpack("<IIII", b[pos:pos + 16])
        out.append((sec, usec, cap, wire, b[pos + 16:pos + 16 + cap]))
        pos += 16 + cap
    return linktype, snaplen, out


DECISIONS = ("packets", "bytes", "flows", "uplinks", "classes", "drops", "flow_events", "kernel", "notes")


@pytest.mark.parametrize("name,convert,linktype,dlt", [
    ("sll", sll, 113, 113), ("sll2", sll2, 276, 276), ("raw", raw, 101, 12), ("raw14", raw, 14, 14)])
def test_cooked_and_raw_captures_replay_like_ethernet(trace, tmp_path, name, convert, linktype, dlt):
    """The same packets as SLL, SLL2 or raw IP give the same decisions as the Ethernet capture;
    --out holds the records exactly as read, in the capture's link type."""
    recs = read(trace)
    if name.startswith("raw"):       # not IP: a version nibble of 5 (Ethernet: ethertype 0)
        extra = [g.eth(b"\x50" + bytes(39), 0)]
    else:                            # ARP: ethertype 0x0806 in both
        extra = [g.eth(bytes(28), 0x0806)]
    recs = recs[:3000] + [(recs[2999][0], f) for f in extra] + recs[3000:]
    eth = tmp_path / "eth.pcap"
    other = tmp_path / f"{name}.pcap"
    eth.write_bytes(pcap_bytes(recs))
    other.write_bytes(pcap_bytes([(t, convert(f)) for t, f in recs], linktype=linktype))
    cfg = load_config(None)
    a = Replay(str(eth), cfg, batch=100, progress=False).run()
    b = Replay(str(other), cfg, batch=100, out_dir=str(tmp_path / "out"), progress=False).run()
    for k in DECISIONS:
        assert a[k] == b[k], k
    assert a["kernel"] >= 1 and b["link_type"] == dlt
    # every record the pipeline did not leave to the host is in one --out pcap, byte for byte
    written = []
    for f in ("ar1", "ar2", "dropped"):
        lt, _, rs = records(tmp_path / "out" / f"{f}.pcap")
        assert lt == (101 if name.startswith("raw") else linktype)
        written += [r[4] for r in rs]
    assert len(written) == a["packets"] - a["kernel"]
    inputs = {convert(f) for _, f in recs}
    assert all(w in inputs for w in written)
    txt = run_cli(str(other))
    assert txt.returncode == 0 and "replayed as Ethernet frames" in txt.stdout


def test_short_cooked_records_are_drops_not_errors(tmp_path):
    """Records shorter than their link header are frames too short to parse, nothing worse."""
    for linktype, hdr in ((113, 16), (276, 20), (101, 0)):
        path = tmp_path / f"short{linktype}.pcap"
        path.write_bytes(pcap_bytes([(1.0, bytes(n)) for n in range(0, hdr + 3)], linktype=linktype))
        s = Replay(str(path), load_config(None), batch=7, progress=False).run()
        assert s["packets"] == hdr + 3
        assert sum(s["drops"].values()) + s["kernel"] == hdr + 3


def test_long_frames_round_trip_whole_through_out(tmp_path):
    """Frames of 1518 and 4000 bytes come back whole from --out, read by libpcap (dpkt's
    default snapshot of 1500 cut them); a 70000-byte record (too long for IPv6 without a
    jumbogram: dropped) raises the snapshot length so it comes back whole too."""
    import pcapy

    frames = [g.eth(g.ipv6(g.hbh(17, g.tc_option(3, 2)) + g.udp(sport=5 + n, payload=bytes(n)), 0))
              for n in (3930, 1448)]
    assert [len(f) for f in frames] == [4000, 1518]
    huge = g.eth(b"\x60" + bytes(70000 - 15))           # IPv6 of payload length 0, 70000 bytes
    path = tmp_path / "long.pcap"
    path.write_bytes(pcap_bytes([(1.0, frames[0]), (2.0, frames[1]), (3.0, huge)], snaplen=262144))
    s = Replay(str(path), load_config(None), out_dir=str(tmp_path / "out"), progress=False).run()
    assert s["packets"] == 3 and s["kernel"] == 0
    got = {}
    for name in ("ar1", "ar2", "dropped"):
        r = pcapy.open_offline(str(tmp_path / "out" / f"{name}.pcap"))
        while True:
            h, d = r.next()
            if h is None:
                break
            assert h.getcaplen() == h.getlen() == len(d)
            got[bytes(d)] = name
    assert set(got) == {frames[0], frames[1], huge}
    snaplens = {n: records(tmp_path / "out" / f"{n}.pcap")[1] for n in ("ar1", "ar2", "dropped")}
    assert snaplens[got[huge]] == 262144
    assert all(v == 65535 for n, v in snaplens.items() if n != got[huge])


def test_corrupt_record_in_the_middle_is_an_error_after_the_summary(trace, tmp_path):
    data = bytearray(open(trace, "rb").read())
    pos = 24
    for _ in range(100):
        pos += 16 + struct.unpack("<I", data[pos + 8:pos + 12])[0]
    data[pos + 8:pos + 12] = struct.pack("<I", 0x7FFFFFFF)       # record 101: absurd caplen
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(bytes(data))
    flows = tmp_path / "flows.csv"
    p = run_cli(str(bad), "--json", "--flows", str(flows), "--out", str(tmp_path / "out"))
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert f"is corrupt at byte {pos} of {len(data)}: invalid packet capture length" in p.stderr
    assert "the 100 packets before it were replayed" in p.stderr
    s = json.loads(p.stdout)
    assert s["packets"] == 100 and s["corrupt"]["at_byte"] == pos and "truncated" not in s
    assert len(list(csv.DictReader(open(flows)))) == s["flows"]
    assert sum(len(records(tmp_path / "out" / f"{n}.pcap")[2]) for n in ("ar1", "ar2", "dropped")) == 100
    txt = run_cli(str(bad))
    assert txt.returncode == 2 and f"corrupt at byte {pos}" in txt.stdout


def test_corrupt_pcapng_block_is_an_error(tmp_path):
    buf = io.BytesIO()
    w = dpkt.pcapng.Writer(buf)
    for i in range(4):
        w.writepkt(g.tagged_udp(sport=100 + i), ts=10.0 + i)
    data = bytearray(buf.getvalue())
    blocks, pos = [], 0
    while pos < len(data):
        blocks.append(pos)
        pos += struct.unpack("<I", data[pos + 4:pos + 8])[0]
    third = blocks[4]                                   # SHB, IDB, EPB, EPB, EPB (the third)
    data[third + 4:third + 8] = struct.pack("<I", 5)    # block length below 12
    path = tmp_path / "bad.pcapng"
    path.write_bytes(bytes(data))
    p = run_cli(str(path), "--json")
    assert p.returncode == 2 and f"is corrupt at byte {third} of {len(data)}" in p.stderr
    assert json.loads(p.stdout)["packets"] == 2 and p.stderr.count("\n") == 1


def test_timestamps_a_pcap_cannot_hold(tmp_path):
    """pcapng seconds past 2**32 are clamped in --out (counted); a pcap's microseconds of a
    second or more are carried; pcap seconds past 2**31 are not negative."""
    buf = io.BytesIO()
    w = dpkt.pcapng.Writer(buf)
    w.writepkt(g.tagged_udp(sport=1), ts=5.0)
    w.writepkt(g.tagged_udp(sport=2), ts=2.0 ** 33 + 0.5)
    ng = tmp_path / "future.pcapng"
    ng.write_bytes(buf.getvalue())
    p = run_cli(str(ng), "--out", str(tmp_path / "ng"), "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["timestamps"] == {"usec_carried": 0, "out_of_range": 1} and s["packets"] == 2
    stamps = sorted((r[0], r[1]) for n in ("ar1", "ar2", "dropped")
                    for r in records(tmp_path / "ng" / f"{n}.pcap")[2])
    assert stamps == [(5, 0), (2 ** 32 - 1, 999_999)]
    assert "outside what a pcap" in run_cli(str(ng), "--out", str(tmp_path / "ng2")).stdout

    pc = tmp_path / "odd.pcap"
    pc.write_bytes(pcap_bytes([(3_000_000_000, 5, g.tagged_udp(sport=1)),
                               (3_000_000_000, 2_500_000, g.tagged_udp(sport=2))]))
    p = run_cli(str(pc), "--out", str(tmp_path / "pc"), "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["timestamps"] == {"usec_carried": 1, "out_of_range": 0}
    stamps = sorted((r[0], r[1]) for n in ("ar1", "ar2", "dropped")
                    for r in records(tmp_path / "pc" / f"{n}.pcap")[2])
    assert stamps == [(3_000_000_000, 5), (3_000_000_002, 500_000)]


def test_flows_dash_is_stdout_and_summary_goes_to_stderr(trace, tmp_path):
    p = run_cli(trace, "--flows", "-")
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert rows and list(rows[0])[0] == "src" and "replay " not in p.stdout
    assert f"replay {trace}: 6000 packets" in p.stderr
    assert not (tmp_path / "-").exists()
    q = run_cli(trace, "--flows", "-", "--json")
    assert len(list(csv.DictReader(io.StringIO(q.stdout)))) == len(rows) == json.loads(q.stderr)["flows"]
    r = run_cli(trace, "--out", "-")
    assert r.returncode == 2 and "--out -" in r.stderr and r.stderr.count("\n") == 1
    u = run_cli(trace, "--flows", str(tmp_path / "no" / "such" / "dir.csv"))
    assert u.returncode == 2 and "cannot write it" in u.stderr and "replay " not in u.stdout


def test_progress_line(trace):
    quiet = run_cli(trace)                          # stderr is a pipe: no progress line
    assert quiet.returncode == 0 and quiet.stderr == ""
    shown = run_cli(trace, "--progress")
    assert shown.returncode == 0
    last = shown.stderr.strip().splitlines()[-1]
    assert last.startswith("mix.pcap: 100%") and "6,000 packets" in last
    assert run_cli(trace, "--progress", "--no-progress").returncode == 2
    assert "tqdm" not in open(__import__("engine.replay").replay.__file__).read()
