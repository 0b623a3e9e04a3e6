"""The whole data path: compiled pipeline vs the reference pipeline, and mmr replay."""
import csv
import json
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
        frames = [f for _, f in chunk] + junk
        ts = np.array([t for t, _ in chunk] + [chunk[-1][0]] * len(junk))
        buf, off, ln = pack_frames(frames)
        oa = a.process(buf, off, ln, ts).copy()
        ob = b.process(buf, off, ln, ts)
        assert (oa == ob).all()
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
    raw = tmp_path / "raw.pcap"
    with open(raw, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_RAW)
        w.writepkt(b"\x60" + bytes(39), ts=1)
    p = run_cli(str(raw))
    assert p.returncode == 2 and "not Ethernet" in p.stderr
    for q in (p,):
        assert "Traceback" not in q.stderr and q.stderr.count("\n") == 1


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
