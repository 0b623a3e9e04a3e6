"""Whole replay vs a read-only pcapy-ng loop on the same file (the 50k synth mix, and a
1M-packet trace made of it), and vs a pure-Python pipeline."""
import os
import struct

import numpy as np
import pcapy
import pytest

from engine.config import load_config
from engine.replay import Replay
from pypipeline import PyPipeline
from ratio import compare

TARGET_COST = 1.0        # issue 14: the whole replay costs <= 1x pcapy-ng's read-only loop
# CI gates at ratio >= 0.6 (cost <= 1.67x), below the target: this machine measured 1.6-4.6x
# on the 50k mix and 4.6-6.6x on the 1M trace (bench/README.md) while other jobs shared its
# 2 cores, and the 50k figure swings most (a replay's fixed costs, building the flow table,
# are a fifth of it there, and one noisy round of three hits the short replay harder than
# the longer read loop).  A gate at the target itself (1.0) would keep a margin of only
# 1.6x over the worst run measured; 0.6 keeps 2.6x.  The gate does not tell the old
# per-packet read (0.62-0.90x) from the walker: tests/test_pcapwalk.py checks that replay
# reads a pcap with the compiled walker and never with pcapy-ng.
GATE_RATIO = 0.6
TRACE_PACKETS = 1_000_000


@pytest.fixture(scope="session")
def trace_1m(mix_pcap, tmp_path_factory):
    """A 1M-packet trace: the 50k synth mix 20 times over, each copy 1 s after the previous
    one ends (seconds shifted in every record header), so time only moves forward and the
    flows go idle and come back as they would.  About 1 GB; removed after the session."""
    data = open(mix_pcap, "rb").read()
    assert data[:4] == b"\xd4\xc3\xb2\xa1"            # little-endian microsecond pcap
    offs, pos = [], 24
    while pos < len(data):
        offs.append(pos)
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    body = np.frombuffer(data, np.uint8, offset=24)
    idx = (np.array(offs, np.int64) - 24)[:, None] + np.arange(4)
    secs = body[idx].copy().view("<u4").ravel().astype(np.int64)
    span = int(secs.max() - secs.min()) + 1
    copies = TRACE_PACKETS // len(offs)
    assert copies * len(offs) == TRACE_PACKETS
    path = tmp_path_factory.mktemp("bench1m") / "trace-1m.pcap"
    with open(path, "wb") as f:
        f.write(data[:24])
        part = body.copy()
        for k in range(copies):
            part[idx] = (secs + k * span).astype("<u4").view(np.uint8).reshape(-1, 4)
            f.write(part.tobytes())
    yield str(path)
    os.unlink(path)


def read_only(path):
    def run():
        n = 0
        r = pcapy.open_offline(path)
        nxt = r.next
        while True:
            h, d = nxt()
            if h is None:
                break
            h.getts()
            n += 1
        return n
    return run


def replay(path, cfg):
    return lambda: Replay(path, cfg, progress=False).run()


def test_gate_replay_vs_pcapy_read(mix_pcap):
    cfg = load_config(None)
    r = compare("replay vs read-only", replay(mix_pcap, cfg), read_only(mix_pcap), 50_000,
                baseline="pcapy read loop", rounds=3)
    assert r.ratio >= GATE_RATIO, r.line()


def test_gate_replay_vs_pcapy_read_1m(trace_1m):
    """The issue's measurement: the whole replay of a 1M-packet trace vs pcapy-ng reading it."""
    cfg = load_config(None)
    counts = []

    def mmr():
        counts.append(replay(trace_1m, cfg)()["packets"])

    def base():
        counts.append(read_only(trace_1m)())

    r = compare("replay vs read-only, 1M-packet trace", mmr, base, TRACE_PACKETS,
                baseline="pcapy read loop", rounds=2, min_time=0)
    assert set(counts) == {TRACE_PACKETS}, set(counts)
    assert r.ratio >= GATE_RATIO, r.line()


def test_gate_replay_vs_python_pipeline(mix_pcap, mix_frames):
    cfg = load_config(None)
    frames, ts, _ = mix_frames

    def py():
        p = PyPipeline(cfg)
        for f, t in zip(frames, ts.tolist()):
            p.packet(f, t)

    r = compare("replay vs pure-Python dpkt pipeline", replay(mix_pcap, cfg), py, len(frames),
                baseline="python+dpkt pipeline", rounds=2)
    assert r.ratio >= 3.0, r.line()   # no target in the issue; mmr also pays the pcap read here


@pytest.mark.parametrize("impl", ["mmr-replay", "pcapy-read-only"])
def test_bench_replay(benchmark, impl, mix_pcap):
    benchmark.group = "replay synth-mix (50k frames)"
    fn = replay(mix_pcap, load_config(None)) if impl == "mmr-replay" else read_only(mix_pcap)
    result = benchmark.pedantic(fn, rounds=3, iterations=1)
    assert (result["packets"] if impl == "mmr-replay" else result) == 50_000
