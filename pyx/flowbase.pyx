# cython: language_level=3
"""flowbase: flow key -> uplink, so later packets of a flow follow its first decision.

Takes   parsed rows (ROW_DTYPE), per-row times (the caller's clock: packet timestamps in a
        replay, wall time live) and an int16 ``out`` array the caller owns: -1 = route me,
        anything else = skip (the pipeline marks frames it will not forward with -2/-3).
Emits   out[i] = the flow's uplink on a hit; new flows on ``insert``.
Counts  created, expired, evicted, removed, rebound, lookups, hits, misses.

Idle expiry is exact per packet: a flow whose last packet is more than ``idle_timeout``
seconds (caller's clock) before the current one is forgotten when that packet looks it up,
so the decisions do not depend on batch boundaries; ``expire()`` sweeps idle flows from the
LRU tail to free their records.

Structure (after Snabb's ctable): a compact index of 8-byte slots (32-bit hash, record id)
with robin-hood linear probing and backward-shift deletion, over a fixed pool of flow
records with stable ids.  An intrusive doubly linked LRU list runs through the records
(most recently used at the head).  Capacity is fixed at creation and never grows: when the
pool is full, the least recently used flow is evicted.  The hash is SipHash-1-3 of the
37-byte key (src, dst, sport, dport, proto) under a random per-process 128-bit key, so
crafted addresses cannot force long probe chains.  Index slots = next power of two >=
capacity / 0.8, so the index is at most 80 % full.
"""
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t
from libc.stdlib cimport realloc, free
from libc.string cimport memcpy, memset, memcmp

cimport rows
from rows cimport mmr_row
from siphash cimport siphash13

import os
import numpy as np
from engine.constants import ROW_DTYPE

cdef extern from *:
    """
    #define MMR_NIL 0xFFFFFFFFu
    #define MMR_PREFETCH(p) __builtin_prefetch((const void*)(p), 0, 1)
    """
    const uint32_t NIL "MMR_NIL"
    void MMR_PREFETCH(const void* p) nogil

DEF KEYLEN = 40
DEF MAX_LOAD = 0.8

FLOW_DTYPE = np.dtype([
    ("src", "u1", (16,)), ("dst", "u1", (16,)), ("proto", "u1"), ("sport", "<u2"),
    ("dport", "<u2"), ("uplink", "u1"), ("service", "u1"), ("preference", "<u2"),
    ("first_seen", "<f8"), ("last_seen", "<f8"), ("packets", "<u8"), ("bytes", "<u8"),
])


cdef inline void make_key(const mmr_row* r, uint8_t* key) noexcept nogil:
    memcpy(key, r.src, 16)
    memcpy(key + 16, r.dst, 16)
    memcpy(key + 32, &r.sport, 2)
    memcpy(key + 34, &r.dport, 2)
    key[36] = r.proto
    key[37] = 0
    key[38] = 0
    key[39] = 0


cdef class FlowTable:
    def __cinit__(self, capacity, seed=None, idle_timeout=float("inf")):
        self.idx = NULL
        self.recs = NULL
        self.exp = NULL

    def __init__(self, capacity, seed=None, idle_timeout=float("inf")):
        cdef uint32_t i
        self.idle_timeout = float(idle_timeout)
        if not self.idle_timeout > 0:
            raise ValueError("idle_timeout must be > 0")
        capacity = int(capacity)
        if not 1 <= capacity <= (1 << 28):
            raise ValueError(f"capacity {capacity} must be between 1 and {1 << 28}")
        if seed is None:
            seed = os.urandom(16)
        seed = bytes(seed)
        if len(seed) != 16:
            raise ValueError("seed must be 16 bytes")
        self.k0 = int.from_bytes(seed[:8], "little")
        self.k1 = int.from_bytes(seed[8:], "little")
        self.capacity = capacity
        n = 8
        while n * MAX_LOAD < capacity:
            n *= 2
        self.slots_n = n
        self.mask = n - 1
        self.idx = <fb_slot*>PyMem_Malloc(n * sizeof(fb_slot))
        self.recs = <fb_rec*>PyMem_Malloc(capacity * sizeof(fb_rec))
        if self.idx == NULL or self.recs == NULL:
            raise MemoryError(f"cannot allocate a flowbase of {capacity} flows")
        memset(self.idx, 0xFF, n * sizeof(fb_slot))
        memset(self.recs, 0, capacity * sizeof(fb_rec))
        for i in range(capacity):
            self.recs[i].next = i + 1 if i + 1 < capacity else NIL
        self.free_head = 0
        self.head = NIL
        self.tail = NIL
        self.size = 0
        memset(self.created_up, 0, sizeof(self.created_up))

    def __dealloc__(self):
        PyMem_Free(self.idx)
        PyMem_Free(self.recs)
        free(self.exp)

    def __len__(self):
        return self.size

    @property
    def bytes_per_flow(self):
        return (<double>self.slots_n * sizeof(fb_slot) + <double>self.capacity * sizeof(fb_rec)) / self.capacity

    @property
    def slots(self):
        return self.slots_n

    # ------------------------------------------------------------ LRU list
    cdef inline void lru_unlink(self, uint32_t r) noexcept nogil:
        cdef fb_rec* e = &self.recs[r]
        if e.prev != NIL:
            self.recs[e.prev].next = e.next
        else:
            self.head = e.next
        if e.next != NIL:
            self.recs[e.next].prev = e.prev
        else:
            self.tail = e.prev

    cdef inline void lru_push(self, uint32_t r) noexcept nogil:
        cdef fb_rec* e = &self.recs[r]
        e.prev = NIL
        e.next = self.head
        if self.head != NIL:
            self.recs[self.head].prev = r
        self.head = r
        if self.tail == NIL:
            self.tail = r

    cdef inline void touch(self, uint32_t r) noexcept nogil:
        if self.head != r:
            self.lru_unlink(r)
            self.lru_push(r)

    # ------------------------------------------------------------ index
    cdef inline uint32_t find(self, const uint8_t* key, uint32_t h) noexcept nogil:
        cdef uint32_t i = h & self.mask
        cdef uint32_t dist = 0
        cdef fb_slot s
        while True:
            s = self.idx[i]
            if s.rec == NIL:
                return NIL
            if ((i - s.hash) & self.mask) < dist:
                return NIL
            if s.hash == h and memcmp(self.recs[s.rec].key, key, KEYLEN) == 0:
                return s.rec
            i = (i + 1) & self.mask
            dist += 1

    cdef inline void place(self, uint32_t h, uint32_t rec) noexcept nogil:
        cdef uint32_t i = h & self.mask
        cdef uint32_t dist = 0, d
        cdef fb_slot cur, tmp
        cur.hash = h
        cur.rec = rec
        while True:
            if self.idx[i].rec == NIL:
                self.idx[i] = cur
                return
            d = (i - self.idx[i].hash) & self.mask
            if d < dist:
                tmp = self.idx[i]
                self.idx[i] = cur
                cur = tmp
                dist = d
            i = (i + 1) & self.mask
            dist += 1

    cdef inline void unindex(self, uint32_t rec) noexcept nogil:
        cdef uint32_t h = self.recs[rec].hash
        cdef uint32_t i = h & self.mask
        cdef uint32_t k
        while self.idx[i].rec != rec:
            i = (i + 1) & self.mask
        while True:
            k = (i + 1) & self.mask
            if self.idx[k].rec == NIL or ((k - self.idx[k].hash) & self.mask) == 0:
                self.idx[i].rec = NIL
                self.idx[i].hash = NIL
                return
            self.idx[i] = self.idx[k]
            i = k

    cdef inline void export_rec(self, uint32_t rec) noexcept nogil:
        cdef size_t cap
        cdef fb_rec* p
        if not self.exporting:
            return
        if self.exp_n == self.exp_cap:
            cap = self.exp_cap * 2 if self.exp_cap else 1024
            p = <fb_rec*>realloc(self.exp, cap * sizeof(fb_rec))
            if p == NULL:
                return
            self.exp = p
            self.exp_cap = cap
        memcpy(&self.exp[self.exp_n], &self.recs[rec], sizeof(fb_rec))
        self.exp_n += 1

    cdef inline void delete(self, uint32_t rec) noexcept nogil:
        self.export_rec(rec)
        self.unindex(rec)
        self.lru_unlink(rec)
        self.recs[rec].next = self.free_head
        self.free_head = rec
        self.size -= 1

    # ------------------------------------------------------------ batch API
    cdef mmr_row* rows_ptr(self, rows_arr, Py_ssize_t n) except NULL:
        if not isinstance(rows_arr, np.ndarray) or rows_arr.dtype != ROW_DTYPE or not rows_arr.flags.c_contiguous:
            raise TypeError("rows must be a C-contiguous array of ROW_DTYPE")
        if n > rows_arr.shape[0]:
            raise ValueError("n is larger than rows")
        cdef uint8_t[::1] b = rows_arr.view(np.uint8).reshape(-1)
        if b.shape[0] == 0:
            return <mmr_row*>1   # never dereferenced when n == 0
        return <mmr_row*>&b[0]

    def lookup(self, rows_arr, const double[::1] ts, int16_t[::1] out, Py_ssize_t n=-1):
        """Hits: out[i] = uplink, flow accounted, moved to the LRU head.  Returns misses."""
        if n < 0:
            n = rows_arr.shape[0]
        if n > ts.shape[0] or n > out.shape[0]:
            raise ValueError("ts and out must cover n rows")
        cdef mmr_row* rp = self.rows_ptr(rows_arr, n)
        cdef Py_ssize_t misses
        if n == 0:
            return 0
        with nogil:
            misses = self.lookup_c(rp, &ts[0], &out[0], n, NULL)
        return misses

    cdef Py_ssize_t lookup_c(self, const mmr_row* rp, const double* ts, int16_t* out,
                             Py_ssize_t n, uint32_t* recs) noexcept nogil:
        """Rows at -1 that belong to a known flow get its uplink; recs (NULL: not wanted)
        gets each such row's record index."""
        cdef Py_ssize_t i, j
        cdef uint8_t key[40]
        cdef uint32_t h, rec
        cdef Py_ssize_t misses = 0
        cdef uint32_t hs[32]
        cdef Py_ssize_t blk, m
        i = 0
        while i < n:
            m = n - i if n - i < 32 else 32
            for j in range(m):        # pass 1: hash, prefetch the home slot
                if out[i + j] != -1:
                    continue
                make_key(&rp[i + j], key)
                hs[j] = siphash13(key, KEYLEN // 8, self.k0, self.k1)
                MMR_PREFETCH(&self.idx[hs[j] & self.mask])
            for j in range(m):        # pass 2: probe
                if out[i + j] != -1:
                    continue
                self.lookups += 1
                make_key(&rp[i + j], key)
                rec = self.find(key, hs[j])
                if rec != NIL and ts[i + j] - self.recs[rec].last_seen > self.idle_timeout:
                    self.delete(rec)          # idle too long: forgotten, a new flow
                    self.expired += 1
                    rec = NIL
                if rec == NIL:
                    misses += 1
                    self.misses += 1
                    continue
                self.hits += 1
                out[i + j] = self.recs[rec].uplink
                if recs != NULL:
                    recs[i + j] = rec
                self.recs[rec].last_seen = ts[i + j]
                self.recs[rec].packets += 1
                self.recs[rec].bytes += rp[i + j].length
                self.touch(rec)
            i += m
        return misses

    def insert(self, rows_arr, const double[::1] ts, int16_t[::1] out, const int16_t[::1] choice,
               const uint8_t[::1] service, const uint16_t[::1] preference, Py_ssize_t n=-1):
        """Rows still at -1: join a flow created earlier in this call, or create one with
        choice[i] (evicting the LRU flow when full); choice < 0 creates nothing.
        Returns the number of flows created."""
        if n < 0:
            n = rows_arr.shape[0]
        if n > ts.shape[0] or n > out.shape[0] or n > choice.shape[0] \
                or n > service.shape[0] or n > preference.shape[0]:
            raise ValueError("every array must cover n rows")
        cdef mmr_row* rp = self.rows_ptr(rows_arr, n)
        cdef Py_ssize_t made
        if n == 0:
            return 0
        with nogil:
            made = self.insert_c(rp, &ts[0], &out[0], &choice[0], &service[0], &preference[0], n, NULL)
        return made

    cdef Py_ssize_t insert_c(self, const mmr_row* rp, const double* ts, int16_t* out,
                             const int16_t* choice, const uint8_t* service,
                             const uint16_t* preference, Py_ssize_t n, uint32_t* recs) noexcept nogil:
        cdef Py_ssize_t i
        cdef uint8_t key[40]
        cdef uint32_t h, rec
        cdef fb_rec* e
        cdef Py_ssize_t made = 0
        for i in range(n):
            if out[i] != -1:
                continue
            make_key(&rp[i], key)
            h = siphash13(key, KEYLEN // 8, self.k0, self.k1)
            rec = self.find(key, h)
            if rec != NIL and ts[i] - self.recs[rec].last_seen > self.idle_timeout:
                self.delete(rec)
                self.expired += 1
                rec = NIL
            if rec != NIL:
                e = &self.recs[rec]
                out[i] = e.uplink
                if recs != NULL:
                    recs[i] = rec
                e.last_seen = ts[i]
                e.packets += 1
                e.bytes += rp[i].length
                self.touch(rec)
                continue
            if choice[i] < 0:
                continue
            if self.free_head == NIL:
                self.evicted += 1
                self.delete(self.tail)
            rec = self.free_head
            e = &self.recs[rec]
            self.free_head = e.next
            memcpy(e.key, key, KEYLEN)
            e.hash = h
            e.uplink = <uint8_t>choice[i]
            e.service = service[i]
            e.preference = preference[i]
            e.first_seen = ts[i]
            e.last_seen = ts[i]
            e.packets = 1
            e.bytes = rp[i].length
            self.place(h, rec)
            self.lru_push(rec)
            self.size += 1
            self.created += 1
            self.created_up[e.uplink] += 1
            out[i] = choice[i]
            if recs != NULL:
                recs[i] = rec
            made += 1
        return made

    def expire(self, double now, double idle_timeout):
        """From the LRU tail, remove flows idle longer than idle_timeout; stop at the first
        flow that is not idle (expiry follows LRU order)."""
        cdef Py_ssize_t k = 0
        with nogil:
            while self.tail != NIL and now - self.recs[self.tail].last_seen > idle_timeout:
                self.delete(self.tail)
                k += 1
            self.expired += k
        return k

    def rebind(self, int uplink_from, uplink_to):
        """Move every flow of uplink_from to uplink_to (-1 removes them); uplink_to may be an
        int16[65536, 4] table giving the new uplink per (preference, service)."""
        cdef int16_t[:, ::1] table
        cdef bint use_table = not isinstance(uplink_to, (int, np.integer))
        cdef int to = -1
        if use_table:
            table = np.ascontiguousarray(uplink_to, dtype=np.int16)
            if table.shape[0] != 65536 or table.shape[1] != 4:
                raise ValueError("a rebind table must be int16[65536, 4]")
        else:
            to = int(uplink_to)
            if not -1 <= to <= 255:
                raise ValueError("uplink_to must be -1..255")
        cdef uint32_t r = self.tail, nxt       # least recently used first
        cdef int dest
        cdef Py_ssize_t k = 0
        cdef fb_rec* e
        while r != NIL:
            e = &self.recs[r]
            nxt = e.prev
            if e.uplink == uplink_from:
                dest = table[e.preference, e.service if e.service < 4 else 0] if use_table else to
                k += 1
                if dest < 0:
                    self.removed += 1
                    self.delete(r)
                else:
                    e.uplink = <uint8_t>dest
            r = nxt
        self.rebound += k
        return k

    def remove(self, rows_arr, Py_ssize_t n=-1):
        """Remove the flows of these rows if present; returns how many were removed."""
        if n < 0:
            n = rows_arr.shape[0]
        cdef mmr_row* rp = self.rows_ptr(rows_arr, n)
        cdef uint8_t key[40]
        cdef uint32_t rec
        cdef Py_ssize_t i, k = 0
        for i in range(n):
            make_key(&rp[i], key)
            rec = self.find(key, siphash13(key, KEYLEN // 8, self.k0, self.k1))
            if rec != NIL:
                self.delete(rec)
                self.removed += 1
                k += 1
        return k

    # ------------------------------------------------------------ status
    cdef object recs_to_array(self, fb_rec* base, uint32_t* ids, size_t n, bint use_ids):
        out = np.zeros(n, dtype=FLOW_DTYPE)
        if n == 0:
            return out
        raw = np.zeros((n, 40), np.uint8)
        ups = np.zeros(n, np.uint8)
        svc = np.zeros(n, np.uint8)
        prf = np.zeros(n, np.uint16)
        fs = np.zeros(n, np.float64)
        ls = np.zeros(n, np.float64)
        pk = np.zeros(n, np.uint64)
        by = np.zeros(n, np.uint64)
        cdef uint8_t[:, ::1] rawv = raw
        cdef uint8_t[::1] upv = ups, svv = svc
        cdef uint16_t[::1] prv = prf
        cdef double[::1] fsv = fs, lsv = ls
        cdef uint64_t[::1] pkv = pk, byv = by
        cdef size_t i
        cdef fb_rec* e
        for i in range(n):
            e = &base[ids[i]] if use_ids else &base[i]
            memcpy(&rawv[i, 0], e.key, 40)
            upv[i] = e.uplink
            svv[i] = e.service
            prv[i] = e.preference
            fsv[i] = e.first_seen
            lsv[i] = e.last_seen
            pkv[i] = e.packets
            byv[i] = e.bytes
        out["src"] = raw[:, 0:16]
        out["dst"] = raw[:, 16:32]
        out["sport"] = raw[:, 32:34].copy().view("<u2")[:, 0]
        out["dport"] = raw[:, 34:36].copy().view("<u2")[:, 0]
        out["proto"] = raw[:, 36]
        out["uplink"] = ups
        out["service"] = svc
        out["preference"] = prf
        out["first_seen"] = fs
        out["last_seen"] = ls
        out["packets"] = pk
        out["bytes"] = by
        return out

    def dump(self, limit=None, int uplink=-1):
        """The flows as FLOW_DTYPE, in LRU order (most recently used first): at most
        ``limit`` of them, only those of ``uplink`` when it is >= 0."""
        cdef size_t cap = self.size if limit is None else min(<size_t>max(int(limit), 0), self.size)
        ids = np.zeros(max(cap, 1), np.uint32)
        cdef uint32_t[::1] idv = ids
        cdef uint32_t r = self.head
        cdef size_t k = 0
        while r != NIL and k < cap:
            if uplink < 0 or self.recs[r].uplink == uplink:
                idv[k] = r
                k += 1
            r = self.recs[r].next
        return self.recs_to_array(self.recs, &idv[0], k, True)

    def set_export(self, bint on):
        """Keep a copy of every flow that leaves the table (expired, evicted, removed)."""
        self.exporting = on

    def drain_export(self):
        """The flows that left the table since the last drain, as FLOW_DTYPE."""
        out = self.recs_to_array(self.exp, NULL, self.exp_n, False)
        self.exp_n = 0
        return out

    def uplink_counts(self, int n_uplinks):
        """Flows in the table per uplink."""
        out = np.zeros(n_uplinks, np.int64)
        cdef uint32_t r = self.head
        while r != NIL:
            if self.recs[r].uplink < n_uplinks:
                out[self.recs[r].uplink] += 1
            r = self.recs[r].next
        return out

    def created_per_uplink(self, int n_uplinks):
        """Flows created per uplink since the table was made."""
        return np.array([self.created_up[u] for u in range(n_uplinks)], np.int64)

    def stats(self):
        cdef uint32_t i
        cdef uint64_t tot = 0, mx = 0, d, occ = 0
        for i in range(self.slots_n):
            if self.idx[i].rec != NIL:
                d = (i - self.idx[i].hash) & self.mask
                tot += d
                occ += 1
                if d > mx:
                    mx = d
        return {
            "size": int(self.size), "capacity": int(self.capacity), "slots": int(self.slots_n),
            "created": int(self.created), "expired": int(self.expired),
            "evicted": int(self.evicted), "removed": int(self.removed),
            "rebound": int(self.rebound), "lookups": int(self.lookups), "hits": int(self.hits),
            "misses": int(self.misses), "max_displacement": int(mx),
            "mean_displacement": (<double>tot / occ) if occ else 0.0,
        }

    def key_hash(self, rows_arr, Py_ssize_t i):
        """The 32-bit keyed hash of row i (for tests of the seeding)."""
        if i < 0 or i >= rows_arr.shape[0]:
            raise IndexError("no such row")
        cdef mmr_row* rp = self.rows_ptr(rows_arr, i + 1)
        cdef uint8_t key[40]
        make_key(&rp[i], key)
        return siphash13(key, KEYLEN // 8, self.k0, self.k1)
