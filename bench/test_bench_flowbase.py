"""Flowbase: batched lookup at 1M flows vs dict.get of pre-built tuple keys; insert rate."""
import numpy as np
import pytest

from engine import _flowbase
from engine.constants import ROW_DTYPE
from ratio import compare

N = 1_000_000
TARGET = 2.0             # issue 3: lookup >= 2x dict.get on pre-built keys
GATE = TARGET / 2


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(7)
    rows = np.zeros(N, ROW_DTYPE)
    rows["src"][:, :16] = rng.integers(0, 256, (N, 16), dtype=np.uint8)
    rows["dst"][:, :16] = rng.integers(0, 256, (N, 16), dtype=np.uint8)
    rows["sport"] = rng.integers(0, 65536, N)
    rows["dport"] = rng.integers(0, 65536, N)
    rows["proto"] = 17
    rows["length"] = 200
    t = _flowbase.FlowTable(N)
    out = np.full(N, -1, np.int16)
    t.insert(rows, np.zeros(N), out, (np.arange(N) % 2).astype(np.int16), np.zeros(N, np.uint8),
             np.zeros(N, np.uint16))
    probe = rows[rng.permutation(N)[:200_000]].copy()
    keys = {(bytes(r["src"]), bytes(r["dst"]), int(r["proto"]), int(r["sport"]), int(r["dport"])): int(i % 2)
            for i, r in enumerate(rows)}
    probe_keys = [(bytes(r["src"]), bytes(r["dst"]), int(r["proto"]), int(r["sport"]), int(r["dport"]))
                  for r in probe]
    return t, probe, keys, probe_keys


def test_gate_lookup_vs_dict(table):
    t, probe, keys, probe_keys = table
    n = len(probe)
    ts = np.ones(n)
    out = np.empty(n, np.int16)

    def mmr():
        out.fill(-1)
        t.lookup(probe, ts, out)

    get = keys.get

    def base():
        for k in probe_keys:
            get(k)

    r = compare("flowbase lookup @1M flows", mmr, base, n, baseline="dict.get", rounds=3)
    assert (out >= 0).all()
    assert r.ratio >= GATE, r.line()


def test_memory_per_flow(table):
    t = table[0]
    assert t.bytes_per_flow < 110      # 8-byte slots at <= 80 % load + 88-byte records


@pytest.mark.parametrize("impl", ["mmr", "dict"])
def test_bench_insert(benchmark, impl):
    n = 200_000
    rng = np.random.default_rng(3)
    rows = np.zeros(n, ROW_DTYPE)
    rows["src"][:, :16] = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    rows["sport"] = rng.integers(0, 65536, n)
    keys = [(bytes(r["src"]), bytes(r["dst"]), int(r["proto"]), int(r["sport"]), int(r["dport"])) for r in rows]
    benchmark.group = "flowbase insert (200k new flows)"
    ch = np.zeros(n, np.int16)
    sv = np.zeros(n, np.uint8)
    pf = np.zeros(n, np.uint16)

    def mmr():
        t = _flowbase.FlowTable(n)
        out = np.full(n, -1, np.int16)
        t.insert(rows, np.zeros(n), out, ch, sv, pf)
        return len(t)

    def base():
        d = {}
        for k in keys:
            d[k] = [0, 0.0, 0.0, 1, 0]
        return len(d)

    size = benchmark.pedantic(mmr if impl == "mmr" else base, rounds=3, iterations=1)
    assert size == len(set(keys))          # every distinct flow went in, on both sides
