"""Flowbase: engine._flowbase against the OrderedDict model, seeding, eviction, scale."""
import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine import _flowbase
from engine.constants import ROW_DTYPE
from engine.ref import flowbase as ref

POOL = 40  # distinct keys the machine draws from, so hits, duplicates and eviction occur


def make_rows(ids, lengths=None):
    rows = np.zeros(len(ids), ROW_DTYPE)
    for i, k in enumerate(ids):
        rows[i]["src"][15] = k % 7
        rows[i]["dst"][0] = 0x20
        rows[i]["dst"][15] = k // 7
        rows[i]["proto"] = 17 if k % 3 else 6
        rows[i]["sport"] = 1000 + k
        rows[i]["dport"] = 53
        rows[i]["length"] = 60 + (lengths[i] if lengths is not None else k)
    return rows


def test_compiled_flowbase_is_loaded():
    assert _flowbase.__file__.endswith(".so")
    assert _flowbase.FlowTable is not ref.FlowTable


def test_flow_dtype_matches_reference():
    assert _flowbase.FLOW_DTYPE == ref.FLOW_DTYPE


class Twin(RuleBasedStateMachine):
    """The compiled table and the dict model, driven by the same calls."""

    @initialize(cap=st.integers(1, 24), seed=st.binary(min_size=16, max_size=16),
                idle=st.one_of(st.just(float("inf")), st.floats(0.5, 20.0)))
    def setup(self, cap, seed, idle):
        self.c = _flowbase.FlowTable(cap, seed, idle)
        self.r = ref.FlowTable(cap, None, idle)
        self.now = 1000.0
        self.c.set_export(True)
        self.r.set_export(True)

    def _batch(self, ids, skip):
        rows = make_rows(ids)
        ts = np.array([self.now + 0.001 * i for i in range(len(ids))])
        out = np.array([-2 if s else -1 for s in skip], np.int16)
        return rows, ts, out

    @rule(ids=st.lists(st.integers(0, POOL - 1), min_size=1, max_size=20), data=st.data())
    def lookup_insert(self, ids, data):
        skip = data.draw(st.lists(st.booleans(), min_size=len(ids), max_size=len(ids)))
        choice = np.array(data.draw(st.lists(st.integers(-1, 3), min_size=len(ids), max_size=len(ids))), np.int16)
        svc = np.array([k % 4 for k in ids], np.uint8)
        pref = np.array([k % 5 for k in ids], np.uint16)
        rows, ts, out_c = self._batch(ids, skip)
        out_r = out_c.copy()
        assert self.c.lookup(rows, ts, out_c) == self.r.lookup(rows, ts, out_r)
        assert (out_c == out_r).all()
        assert self.c.insert(rows, ts, out_c, choice, svc, pref) == \
            self.r.insert(rows, ts, out_r, choice, svc, pref)
        assert (out_c == out_r).all()
        self.now += 1.0

    @rule(ids=st.lists(st.integers(0, POOL - 1), min_size=1, max_size=10))
    def lookup_only(self, ids):
        rows, ts, out_c = self._batch(ids, [False] * len(ids))
        out_r = out_c.copy()
        assert self.c.lookup(rows, ts, out_c) == self.r.lookup(rows, ts, out_r)
        assert (out_c == out_r).all()

    @rule(dt=st.floats(-2.0, 30.0), timeout=st.floats(0.5, 10.0))
    def expire(self, dt, timeout):
        self.now += dt   # the caller's clock may step back a little
        assert self.c.expire(self.now, timeout) == self.r.expire(self.now, timeout)

    @rule(frm=st.integers(0, 3), to=st.integers(-1, 3))
    def rebind(self, frm, to):
        assert self.c.rebind(frm, to) == self.r.rebind(frm, to)

    @rule(frm=st.integers(0, 3), seed=st.integers(0, 2**32 - 1))
    def rebind_table(self, frm, seed):
        table = np.random.default_rng(seed).integers(-1, 4, (65536, 4)).astype(np.int16)
        assert self.c.rebind(frm, table) == self.r.rebind(frm, table)

    @rule(ids=st.lists(st.integers(0, POOL - 1), min_size=1, max_size=5))
    def remove(self, ids):
        rows = make_rows(ids)
        assert self.c.remove(rows) == self.r.remove(rows)

    @invariant()
    def same_state(self):
        if not hasattr(self, "c"):
            return
        assert len(self.c) == len(self.r) <= self.c.capacity
        assert self.c.dump().tobytes() == self.r.dump().tobytes()
        assert self.c.drain_export().tobytes() == self.r.drain_export().tobytes()
        sc, sr = self.c.stats(), self.r.stats()
        for k in ("size", "created", "expired", "evicted", "removed", "rebound", "lookups", "hits", "misses"):
            assert sc[k] == sr[k], k
        assert (self.c.uplink_counts(4) == self.r.uplink_counts(4)).all()
        assert (self.c.created_per_uplink(4) == self.r.created_per_uplink(4)).all()


Twin.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
test_twin = Twin.TestCase


def test_eviction_takes_the_least_recently_used():
    t = _flowbase.FlowTable(3, b"s" * 16)
    ts = np.array([1.0, 2.0, 3.0])
    rows = make_rows([0, 1, 2])
    out = np.full(3, -1, np.int16)
    t.insert(rows, ts, out, np.zeros(3, np.int16), np.zeros(3, np.uint8), np.zeros(3, np.uint16))
    out = np.full(1, -1, np.int16)
    t.lookup(make_rows([0]), np.array([4.0]), out)            # 0 is now the most recent
    assert out[0] == 0
    out = np.full(1, -1, np.int16)
    t.insert(make_rows([3]), np.array([5.0]), out, np.ones(1, np.int16), np.zeros(1, np.uint8),
             np.zeros(1, np.uint16))
    left = {int(r["sport"]) - 1000 for r in t.dump()}
    assert left == {0, 2, 3}                                    # 1 was least recently used
    assert t.stats()["evicted"] == 1 and len(t) == 3


def test_later_packets_in_one_batch_follow_the_first_decision():
    t = _flowbase.FlowTable(16, b"s" * 16)
    rows = make_rows([5, 5, 5])
    out = np.full(3, -1, np.int16)
    assert t.lookup(rows, np.zeros(3), out) == 3
    made = t.insert(rows, np.zeros(3), out, np.array([2, 0, 1], np.int16),
                    np.zeros(3, np.uint8), np.zeros(3, np.uint16))
    assert made == 1 and list(out) == [2, 2, 2]
    f = t.dump()[0]
    assert f["packets"] == 3 and f["bytes"] == 3 * (60 + 5)


def test_seeded_hash():
    rows = make_rows(range(50))
    a = _flowbase.FlowTable(64, b"a" * 16)
    a2 = _flowbase.FlowTable(64, b"a" * 16)
    b = _flowbase.FlowTable(64, b"b" * 16)
    ha = [a.key_hash(rows, i) for i in range(50)]
    assert ha == [a2.key_hash(rows, i) for i in range(50)]
    assert ha != [b.key_hash(rows, i) for i in range(50)]
    r1 = _flowbase.FlowTable(64)
    r2 = _flowbase.FlowTable(64)
    assert [r1.key_hash(rows, i) for i in range(5)] != [r2.key_hash(rows, i) for i in range(5)]


def test_adversarial_keys_keep_probe_chains_short():
    """100k keys differing only in the low bytes of the destination, 80 % load."""
    n = 100_000
    t = _flowbase.FlowTable(n)
    rows = np.zeros(n, ROW_DTYPE)
    rows["dst"][:, 14] = (np.arange(n) >> 8) & 0xFF
    rows["dst"][:, 15] = np.arange(n) & 0xFF
    rows["dst"][:, 13] = np.arange(n) >> 16
    out = np.full(n, -1, np.int16)
    t.insert(rows, np.zeros(n), out, np.zeros(n, np.int16), np.zeros(n, np.uint8), np.zeros(n, np.uint16))
    st_ = t.stats()
    assert st_["size"] == n and st_["slots"] == 131072 * 1
    assert st_["mean_displacement"] < 3.0 and st_["max_displacement"] < 64


def test_capacity_never_exceeded_and_memory_fixed():
    t = _flowbase.FlowTable(100)
    per = t.bytes_per_flow
    for k in range(10):
        rows = make_rows(range(k * 50, k * 50 + 50))
        out = np.full(50, -1, np.int16)
        t.insert(rows, np.full(50, float(k)), out, np.zeros(50, np.int16), np.zeros(50, np.uint8),
                 np.zeros(50, np.uint16))
        assert len(t) <= 100
    assert t.bytes_per_flow == per and t.stats()["evicted"] == 400


def test_bad_arguments_are_errors_not_crashes():
    with pytest.raises(ValueError):
        _flowbase.FlowTable(0)
    t = _flowbase.FlowTable(4)
    with pytest.raises(TypeError):
        t.lookup(np.zeros(2, np.uint8), np.zeros(2), np.full(2, -1, np.int16))
    with pytest.raises(ValueError):
        t.lookup(make_rows([1, 2]), np.zeros(1), np.full(2, -1, np.int16))
    with pytest.raises(ValueError):
        t.rebind(0, np.zeros((3, 4), np.int16))


def test_one_million_flows():
    n = 1_000_000
    t = _flowbase.FlowTable(n)
    rows = np.zeros(n, ROW_DTYPE)
    ids = np.arange(n, dtype=np.uint32)
    rows["src"][:, 12:16] = ids.view(np.uint8).reshape(n, 4)
    rows["proto"] = 6
    rows["length"] = 100
    out = np.full(n, -1, np.int16)
    ch = (ids % 3).astype(np.int16)
    assert t.lookup(rows, np.zeros(n), out) == n
    assert t.insert(rows, np.zeros(n), out, ch, np.zeros(n, np.uint8), np.zeros(n, np.uint16)) == n
    out[:] = -1
    assert t.lookup(rows, np.ones(n), out) == 0
    assert (out == ch).all()
    assert list(t.uplink_counts(3)) == [333334, 333333, 333333]
    assert 88 < t.bytes_per_flow < 110


def siphash13_ref(data: bytes, k0: int, k1: int) -> int:
    """SipHash-1-3 (one compression round, three finalisation rounds), 64-bit result."""
    mask = (1 << 64) - 1

    def rotl(x, b):
        return ((x << b) | (x >> (64 - b))) & mask

    def rnd(v0, v1, v2, v3):
        v0 = (v0 + v1) & mask; v1 = rotl(v1, 13) ^ v0; v0 = rotl(v0, 32)
        v2 = (v2 + v3) & mask; v3 = rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & mask; v3 = rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & mask; v1 = rotl(v1, 17) ^ v2; v2 = rotl(v2, 32)
        return v0, v1, v2, v3

    v = [k0 ^ 0x736f6d6570736575, k1 ^ 0x646f72616e646f6d, k0 ^ 0x6c7967656e657261, k1 ^ 0x7465646279746573]
    tail = data[len(data) // 8 * 8:] + bytes(7 - len(data) % 8)
    words = [int.from_bytes(data[i:i + 8], "little") for i in range(0, len(data) // 8 * 8, 8)]
    words.append(int.from_bytes(tail + bytes([len(data) & 0xFF]), "little"))
    for m in words:
        v[3] ^= m
        v = list(rnd(*v))
        v[0] ^= m
    v[2] ^= 0xFF
    for _ in range(3):
        v = list(rnd(*v))
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def test_siphash_reference_agrees_with_cpython():
    """The reference above is CPython's own bytes hash when the hash secret is zero
    (PYTHONHASHSEED=0): an oracle written by someone else. (CPython hashes b"" to 0 without
    SipHash, so the samples start at one byte.)"""
    import subprocess
    import sys
    samples = [bytes(range(n)) for n in (1, 7, 8, 16, 40)] + [b"\xff" * 40]
    out = subprocess.run([sys.executable, "-c", f"print([hash(b) for b in {samples!r}])"],
                         env={"PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=True).stdout

    def as_py_hash(h):
        h = h - (1 << 64) if h >= 1 << 63 else h
        return -2 if h == -1 else h
    assert eval(out) == [as_py_hash(siphash13_ref(b, 0, 0)) for b in samples]


def test_compiled_hashes_are_siphash13():
    """The flowbase's 40-byte flow keys and the forwarder's 16-byte addresses share one
    compiled SipHash-1-3 (pyx/siphash.pxd): both equal the reference's low 32 bits."""
    from engine import _forward
    seed = bytes(range(3, 19))
    k0, k1 = int.from_bytes(seed[:8], "little"), int.from_bytes(seed[8:], "little")
    rows = make_rows(range(30))
    t = _flowbase.FlowTable(64, seed)
    for i, r in enumerate(rows):
        key = bytes(r["src"]) + bytes(r["dst"]) + int(r["sport"]).to_bytes(2, "little") + \
            int(r["dport"]).to_bytes(2, "little") + bytes([int(r["proto"]), 0, 0, 0])
        assert t.key_hash(rows, i) == siphash13_ref(key, k0, k1) & 0xFFFFFFFF
    a = _forward.AddrTable(64, seed)
    for addr in [bytes(16), bytes(range(16)), b"\xfe\x80" + bytes(13) + b"\x01", b"\xff" * 16]:
        assert a.key_hash(addr) == siphash13_ref(addr, k0, k1) & 0xFFFFFFFF
    assert a.key_hash(bytes([10, 0, 0, 1])) == siphash13_ref(bytes(10) + b"\xff\xff\x0a\x00\x00\x01", k0, k1) & 0xFFFFFFFF
