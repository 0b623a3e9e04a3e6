# cython: language_level=3
"""edge: the stateful edge (issue 11 item 2): from the uplinks, only what belongs to a flow
the LAN started reaches the LAN.

Takes   parsed rows (pyx/rows.pxd) of frames on their way out by an uplink (LAN addresses:
        before NPTv6 rewrites the source) and on their way in to a LAN host (after NPTv6 or
        NAPT44 translated the destination back), with the time; in, the frame too (an ICMP
        error's quoted packet).
Emits   EDGE_OK / EDGE_UNSOLICITED / EDGE_FULL per packet; the forwarder drops and counts.
State   one flow per (protocol, LAN address and port, remote address and port), found by a
        SipHash-keyed open-addressing table (at most half full; backward-shift deletion),
        made or refreshed by what goes out:
          TCP, UDP, protocols without ports (keyed by their addresses), ICMP/ICMPv6 echo
          requests (their identifier as the LAN port); ICMP errors and echo replies the LAN
          sends make no flow.
        In, a packet passes when
          its reverse tuple is a flow (it is refreshed: a reply; TCP and UDP note it);
          an ICMP error (IPv6: destination unreachable, packet too big, time exceeded,
          parameter problem; IPv4: destination unreachable, time exceeded, parameter
          problem) quotes a packet of a flow sent by its destination (RFC 4890 4.3.1: these
          pass for known flows; an error does not refresh the flow);
          an ICMPv6 echo request (RFC 4890 4.3.1 lists echo request among what must not be
          dropped; the LAN host's stack answers and rate-limits it); IPv4 echo requests are
          unsolicited, as behind every NAT router;
          a later fragment (no transport header: nothing to match; the LAN host cannot
          reassemble it without a first fragment, which the edge checks).
        Everything else is unsolicited.  Idle timeouts are conntrack's defaults (TCP 120 s
        until the reply, 5 days established, 120 s after FIN, 10 s after RST; UDP 30 s,
        120 s once replied; ICMP 30 s; other protocols 600 s), applied by expire() from the
        control side.  A full table refuses new flows (EDGE_FULL, counted in ``full``): an
        established flow is never evicted for a new one.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset, memcmp

cimport rows
from rows cimport mmr_row
from siphash cimport siphash13
from engine._nat cimport spin_lock, spin_unlock

import os

import numpy as np

NAMES = {EDGE_OK: "ok", EDGE_UNSOLICITED: "unsolicited", EDGE_FULL: "full"}
CODES = {v: k for k, v in NAMES.items()}

# conntrack's defaults (seconds); "other": its generic timeout
TIMEOUTS = {"tcp_syn": 120.0, "tcp_established": 432000.0, "tcp_fin": 120.0, "tcp_rst": 10.0,
            "udp": 30.0, "udp_replied": 120.0, "icmp": 30.0, "other": 600.0}

cdef enum:
    ST_NEW = 0           # TCP: no reply yet; UDP: unreplied
    ST_EST = 1           # a reply seen
    ST_FIN = 2
    ST_RST = 3
    MAX_QUOTED_EXT = 8   # extension headers walked in a quoted IPv6 packet


cdef inline uint16_t ld16(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline void make_key(uint8_t* k, const uint8_t* lan, const uint8_t* rem, uint16_t lport,
                          uint16_t rport, uint8_t proto) noexcept nogil:
    memcpy(k, lan, 16)
    memcpy(k + 16, rem, 16)
    k[32] = lport >> 8
    k[33] = lport & 0xFF
    k[34] = rport >> 8
    k[35] = rport & 0xFF
    k[36] = proto
    k[37] = 0
    k[38] = 0
    k[39] = 0


cdef inline bint is_icmp(uint8_t proto, uint8_t family) noexcept nogil:
    return (proto == 58 and family == 6) or (proto == 1 and family == 4)


cdef inline bint has_ports(uint8_t proto) noexcept nogil:
    """The transports whose first four bytes are two ports (pyx/parse.pyx's list)."""
    return proto == 6 or proto == 17 or proto == 132 or proto == 136 or proto == 33


cdef void fill_row(mmr_row* r, dict row) except *:
    """A row dict (engine.ref.parse.parse_frame's) as the C row the forwarder hands over."""
    memset(r, 0, sizeof(mmr_row))
    cdef bytes s = bytes(row["src"]), d = bytes(row["dst"])
    if len(s) != 16 or len(d) != 16:
        raise ValueError("row addresses are 16 bytes")
    memcpy(r.src, <const char*>s, 16)
    memcpy(r.dst, <const char*>d, 16)
    r.sport, r.dport, r.proto, r.family = row["sport"], row["dport"], row["proto"], row["family"]
    r.l3_off, r.l4_off, r.flags, r.icmp_type = row["l3_off"], row["l4_off"], row["flags"], row["icmp_type"]


cdef class Edge:
    """The connection table of the stateful edge: capacity flows, shared by the workers."""

    def __cinit__(self, uint32_t capacity=65536, seed=None, timeouts=None):
        cdef uint32_t size = 16, i
        if capacity < 1 or capacity > (1 << 24):
            raise ValueError("capacity must be 1..16777216")
        while size < 2 * capacity:
            size <<= 1
        self.capacity = capacity
        self.mask = size - 1
        self.flows = <edge_flow*>calloc(capacity, sizeof(edge_flow))
        self.slots = <int32_t*>malloc(size * sizeof(int32_t))
        self.free_flows = <int32_t*>malloc(capacity * sizeof(int32_t))
        if self.flows == NULL or self.slots == NULL or self.free_flows == NULL:
            raise MemoryError()
        memset(self.slots, 0xFF, size * sizeof(int32_t))
        for i in range(capacity):
            self.free_flows[i] = capacity - 1 - i
        self.n_free = capacity
        key = os.urandom(16) if seed is None else int(seed).to_bytes(16, "little")
        self.k0 = int.from_bytes(key[:8], "little")
        self.k1 = int.from_bytes(key[8:], "little")
        t = dict(TIMEOUTS)
        t.update(timeouts or {})
        self.t_syn, self.t_est, self.t_fin, self.t_rst = t["tcp_syn"], t["tcp_established"], t["tcp_fin"], t["tcp_rst"]
        self.t_udp, self.t_udp2, self.t_icmp, self.t_other = t["udp"], t["udp_replied"], t["icmp"], t["other"]
        self.full = 0
        self.hinted = 0

    def __dealloc__(self):
        free(self.flows)
        free(self.slots)
        free(self.free_flows)

    # ---------------------------------------------------------------- the table
    cdef int32_t find(self, const uint8_t* key, uint32_t h) noexcept nogil:
        cdef uint32_t i = h & self.mask
        cdef int32_t m
        while True:
            m = self.slots[i]
            if m < 0:
                return -1
            if self.flows[m].hash == h and memcmp(self.flows[m].key, key, EDGE_KEY) == 0:
                return m
            i = (i + 1) & self.mask

    cdef void release(self, uint32_t m) noexcept nogil:
        """Remove flow m: its slot (backward-shift deletion), then its index to the free stack."""
        cdef edge_flow* e = &self.flows[m]
        cdef uint32_t i = e.hash & self.mask, j, home
        cdef int32_t s
        while self.slots[i] != <int32_t>m:
            i = (i + 1) & self.mask
        j = i
        while True:
            j = (j + 1) & self.mask
            s = self.slots[j]
            if s < 0:
                break
            home = self.flows[s].hash & self.mask
            # s may move into the hole at i when its home is not in (i, j] (cyclically)
            if ((j - home) & self.mask) >= ((j - i) & self.mask):
                self.slots[i] = s
                i = j
        self.slots[i] = -1
        e.used = 0
        self.free_flows[self.n_free] = m
        self.n_free += 1

    cdef double timeout(self, const edge_flow* e) noexcept nogil:
        cdef uint8_t proto = e.key[36]
        if proto == 6:
            if e.state == ST_EST:
                return self.t_est
            if e.state == ST_FIN:
                return self.t_fin
            if e.state == ST_RST:
                return self.t_rst
            return self.t_syn
        if proto == 17:
            return self.t_udp2 if e.state == ST_EST else self.t_udp
        if proto == 1 or proto == 58:
            return self.t_icmp
        return self.t_other

    def expire(self, double now):
        """Forget flows idle past their timeout; returns how many."""
        cdef uint32_t i, k = 0
        with nogil:
            spin_lock(&self.lock)
            for i in range(self.capacity):
                if self.flows[i].used and now - self.flows[i].last > self.timeout(&self.flows[i]):
                    self.release(i)
                    k += 1
            spin_unlock(&self.lock)
        return k

    def clear(self):
        cdef uint32_t i
        with nogil:
            spin_lock(&self.lock)
            for i in range(self.capacity):
                if self.flows[i].used:
                    self.release(i)
            spin_unlock(&self.lock)

    # ---------------------------------------------------------------- out: LAN -> uplink
    cdef int out_c(self, const mmr_row* r, uint8_t tcp_flags, double now, int32_t* hint) noexcept nogil:
        """A packet leaving by an uplink (locked: the workers share the table).  tcp_flags:
        the TCP header's flags byte (0 for other protocols).  hint (NULL: none): the caller's
        memory of the packet's flow, the edge flow it had last time, checked against the key
        before it is used and set to the one it has now."""
        cdef int rc
        spin_lock(&self.lock)
        rc = self.out_locked(r, tcp_flags, now, hint)
        spin_unlock(&self.lock)
        return rc

    cdef int out_locked(self, const mmr_row* r, uint8_t tcp_flags, double now, int32_t* hint) noexcept nogil:
        cdef uint8_t k[EDGE_KEY]
        cdef uint16_t lport = 0, rport = 0
        cdef uint32_t h, i
        cdef int32_t m
        cdef edge_flow* e
        if is_icmp(r.proto, r.family):
            # only an echo request opens a flow (its identifier as the LAN port)
            if not (r.flags & rows.F_ECHO) or r.icmp_type != (128 if r.family == 6 else 8):
                return EDGE_OK
            lport = r.sport
        elif has_ports(r.proto):
            if not (r.flags & rows.F_L4):
                return EDGE_OK               # a later fragment: its first made the flow
            lport, rport = r.sport, r.dport
        make_key(k, r.src, r.dst, lport, rport, r.proto)
        m = -1
        if hint != NULL and hint[0] >= 0 and <uint32_t>hint[0] < self.capacity:
            e = &self.flows[hint[0]]          # the flow's edge record last time: still this key's?
            if e.used and memcmp(e.key, k, EDGE_KEY) == 0:
                m = hint[0]
                self.hinted += 1
        if m < 0:
            h = siphash13(k, 5, self.k0, self.k1)
            m = self.find(k, h)
        if m >= 0:
            if hint != NULL:
                hint[0] = m
            e = &self.flows[m]
            e.last = now
            if r.proto == 6:
                if tcp_flags & 0x04:
                    e.state = ST_RST
                elif tcp_flags & 0x01:
                    e.state = ST_FIN
                elif (tcp_flags & 0x12) == 0x02 and e.state >= ST_FIN:
                    e.state = ST_NEW             # a new connection on a closed one's tuple
            return EDGE_OK
        if self.n_free == 0:
            self.full += 1
            return EDGE_FULL
        self.n_free -= 1
        m = self.free_flows[self.n_free]
        e = &self.flows[m]
        memcpy(e.key, k, EDGE_KEY)
        e.hash = h
        e.last = now
        e.used = 1
        e.state = ST_NEW
        if r.proto == 6:
            if tcp_flags & 0x04:
                e.state = ST_RST
            elif tcp_flags & 0x01:
                e.state = ST_FIN
        i = h & self.mask
        while self.slots[i] >= 0:
            i = (i + 1) & self.mask
        self.slots[i] = m
        if hint != NULL:
            hint[0] = m
        return EDGE_OK

    # ---------------------------------------------------------------- in: uplink -> LAN
    cdef int in_c(self, const mmr_row* r, const uint8_t* frame, uint32_t length, double now) noexcept nogil:
        """A packet from an uplink to a LAN host (locked).  frame: the frame the row describes
        (its offsets), length bytes."""
        cdef int rc
        spin_lock(&self.lock)
        rc = self.in_locked(r, frame, length, now)
        spin_unlock(&self.lock)
        return rc

    cdef int in_locked(self, const mmr_row* r, const uint8_t* frame, uint32_t length, double now) noexcept nogil:
        cdef uint8_t k[EDGE_KEY]
        cdef uint16_t lport = 0, rport = 0
        cdef uint32_t h
        cdef int32_t m
        cdef edge_flow* e
        cdef uint8_t t = r.icmp_type
        if is_icmp(r.proto, r.family):
            if not (r.flags & rows.F_L4):
                return EDGE_OK                   # a later fragment
            if r.family == 6:
                if 1 <= t <= 4:
                    return self.quoted(r, frame, length)
                if t == 128:
                    return EDGE_OK               # RFC 4890 4.3.1
                if t != 129:
                    return EDGE_UNSOLICITED
            else:
                if t == 3 or t == 11 or t == 12:
                    return self.quoted(r, frame, length)
                if t != 0:
                    return EDGE_UNSOLICITED
            if not (r.flags & rows.F_ECHO):
                return EDGE_UNSOLICITED
            lport = r.sport                      # the echo reply's identifier
        elif has_ports(r.proto):
            if not (r.flags & rows.F_L4):
                return EDGE_OK                   # a later fragment
            lport, rport = r.dport, r.sport
        make_key(k, r.dst, r.src, lport, rport, r.proto)
        h = siphash13(k, 5, self.k0, self.k1)
        m = self.find(k, h)
        if m < 0:
            return EDGE_UNSOLICITED
        e = &self.flows[m]
        e.last = now
        if r.proto == 6:
            if length >= <uint32_t>r.l4_off + 14 and frame[r.l4_off + 13] & 0x04:
                e.state = ST_RST
            elif length >= <uint32_t>r.l4_off + 14 and frame[r.l4_off + 13] & 0x01:
                e.state = ST_FIN
            elif e.state == ST_NEW:
                e.state = ST_EST
        elif e.state == ST_NEW:
            e.state = ST_EST
        return EDGE_OK

    cdef int quoted(self, const mmr_row* r, const uint8_t* frame, uint32_t length) noexcept nogil:
        """An ICMP error to a LAN host: EDGE_OK when the packet it quotes was sent by that host
        in one of its flows.  The quote is bounded by the frame; anything cut short or odd
        is unsolicited."""
        cdef uint32_t q = <uint32_t>r.l4_off + 8, off, hl
        cdef uint8_t k[EDGE_KEY]
        cdef uint8_t src[16]
        cdef uint8_t dst[16]
        cdef uint8_t proto
        cdef uint16_t lport = 0, rport = 0
        cdef int n_ext = 0
        if length < q:
            return EDGE_UNSOLICITED
        if r.family == 6:
            if length - q < 40 or (frame[q] >> 4) != 6:
                return EDGE_UNSOLICITED
            memcpy(src, frame + q + 8, 16)
            memcpy(dst, frame + q + 24, 16)
            proto = frame[q + 6]
            off = q + 40
            while proto == 0 or proto == 43 or proto == 60 or proto == 44 or proto == 51:
                n_ext += 1
                if n_ext > MAX_QUOTED_EXT or length < off + 8:
                    return EDGE_UNSOLICITED
                if proto == 44:
                    if ld16(frame + off + 2) & 0xFFF8:
                        return EDGE_UNSOLICITED  # a later fragment quoted: no ports to match
                    hl = 8
                elif proto == 51:
                    hl = (<uint32_t>frame[off + 1] + 2) * 4
                else:
                    hl = (<uint32_t>frame[off + 1] + 1) * 8
                proto = frame[off]
                off += hl
        else:
            if length - q < 20 or (frame[q] >> 4) != 4 or (frame[q] & 0x0F) < 5:
                return EDGE_UNSOLICITED
            memset(src, 0, 10)
            src[10] = 0xFF
            src[11] = 0xFF
            memcpy(src + 12, frame + q + 12, 4)
            memcpy(dst, src, 12)
            memcpy(dst + 12, frame + q + 16, 4)
            proto = frame[q + 9]
            if ld16(frame + q + 6) & 0x1FFF:
                return EDGE_UNSOLICITED          # a later fragment quoted
            off = q + (frame[q] & 0x0F) * 4
        if memcmp(src, r.dst, 16) != 0:
            return EDGE_UNSOLICITED              # it quotes what another host sent
        if (proto == 58 and r.family == 6) or (proto == 1 and r.family == 4):
            if length < off + 8 or frame[off] != (128 if r.family == 6 else 8):
                return EDGE_UNSOLICITED          # only an echo request makes an ICMP flow
            lport = ld16(frame + off + 4)
        elif has_ports(proto):
            if length < off + 4:
                return EDGE_UNSOLICITED
            lport = ld16(frame + off)
            rport = ld16(frame + off + 2)
        make_key(k, src, dst, lport, rport, proto)
        if self.find(k, siphash13(k, 5, self.k0, self.k1)) < 0:
            return EDGE_UNSOLICITED
        return EDGE_OK

    # ---------------------------------------------------------------- Python side (tests)
    def outbound(self, dict row, int tcp_flags, double now):
        """out_c for a row given as a dict (engine.ref.parse.parse_frame's); returns a code."""
        cdef mmr_row r
        fill_row(&r, row)
        return self.out_c(&r, <uint8_t>tcp_flags, now, NULL)

    def inbound(self, dict row, frame, double now):
        """in_c for a row given as a dict and the frame it describes; returns a code."""
        cdef mmr_row r
        cdef bytes f = bytes(frame)
        fill_row(&r, row)
        if r.l4_off > len(f):
            raise ValueError("the row's offsets lie outside the frame")
        return self.in_c(&r, <const uint8_t*><const char*>f, len(f), now)

    def entries(self):
        """Every flow as (key bytes, state, last) (tests, status)."""
        out = []
        cdef uint32_t i
        spin_lock(&self.lock)
        try:
            for i in range(self.capacity):
                if self.flows[i].used:
                    out.append((bytes(self.flows[i].key[:EDGE_KEY]), self.flows[i].state, self.flows[i].last))
        finally:
            spin_unlock(&self.lock)
        return out

    def __len__(self):
        return self.capacity - self.n_free

    def stats(self):
        return {"flows": self.capacity - self.n_free, "capacity": self.capacity, "full": self.full}

    @property
    def bytes_per_flow(self):
        """Memory per tracked flow: its record, two slots of the table, its free-stack entry."""
        return sizeof(edge_flow) + 2 * sizeof(int32_t) + sizeof(int32_t)
