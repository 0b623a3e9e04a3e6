# cython: language_level=3
"""nat: NAPT44 per uplink (issue 11 item 1), in place on IPv4 packets.

Takes   an IPv4 packet (a pointer to its header and the bytes from there), the uplink it
        leaves by (out) or arrived on (in), the time, and whether its upper-layer checksum is
        still a request (a super-frame or an offloaded checksum: the field holds the
        pseudo-header sum, which the kernel or device completes).
Emits   the packet translated: out, the LAN source address and port (ICMP echo: identifier)
        become the uplink's address and a port of its own; in, a reply's destination becomes
        the LAN host's again.  Checksums are updated incrementally (RFC 1624, eq. 3): the IPv4
        header's, TCP's and UDP's (a UDP checksum of 0, "none", stays 0; a result of 0 is sent
        as 0xFFFF), ICMP's; in an ICMP error the embedded header is translated too (its
        addresses, port, IPv4 checksum and upper-layer checksum when the quote holds it) and
        the ICMP checksum follows every changed word.  Fragments: the first carries the ports
        and is translated like the datagram; later ones outbound only change address (the
        upper-layer checksum lives in the first); inbound they follow the first fragment's
        mapping (a later fragment that comes before its first is unknown).
State   one mapping per connection (protocol, LAN address and port, remote address and port,
        uplink), found by a SipHash-keyed open-addressing table; the reverse direction is an
        array per uplink and protocol indexed by the external port (one mapping owns a port:
        no hashing on the return path).  A reply must come from the mapping's remote address
        and port (address-and-port-dependent filtering: the stateful edge); an ICMP error
        must quote a packet of the mapping.  Ports are allocated from 1024-65535: the LAN
        port itself when free (as Linux's masquerade), else from a keyed-hash start, linear.
        Idle timeouts are conntrack's defaults: TCP 120 s until the reply, 5 days
        established, 120 s after FIN, 10 s after RST; UDP 30 s, 120 s once replied; ICMP 30 s.
Returns a NAT_* code per packet; nothing is dropped here (the caller drops and counts).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcmp, memcpy, memset

from siphash cimport siphash13

cdef extern from *:
    int ctz64 "__builtin_ctzll"(unsigned long long x) nogil

import os

import ipaddress

import numpy as np

NAMES = {NAT_OK: "ok", NAT_PASS: "pass", NAT_UNKNOWN: "unknown", NAT_EXHAUSTED: "exhausted",
         NAT_UNSUPPORTED: "unsupported", NAT_MALFORMED: "malformed", NAT_NO_ADDRESS: "no_address"}
CODES = {v: k for k, v in NAMES.items()}

# conntrack's defaults (seconds)
TIMEOUTS = {"tcp_syn": 120.0, "tcp_established": 432000.0, "tcp_fin": 120.0, "tcp_rst": 10.0,
            "udp": 30.0, "udp_replied": 120.0, "icmp": 30.0}
cdef enum:
    FRAG_SLOTS = 1024
cdef double FRAG_TIMEOUT = 30.0
LIMITS = {"frag_slots": FRAG_SLOTS, "frag_timeout": FRAG_TIMEOUT}


def port_list(port_range=(1024, 65535), avoid=None):
    """The ports mappings take, in order: port_range (inclusive) without avoid (inclusive;
    the kernel's own ip_local_port_range, so its connections on the uplink address and
    mmr's mappings never meet)."""
    lo, hi = port_range
    if not 1 <= lo <= hi <= 65535:
        raise ValueError("a port range is 1..65535, low to high")
    ports = np.arange(lo, hi + 1, dtype=np.uint16)
    if avoid is not None:
        ports = ports[(ports < avoid[0]) | (ports > avoid[1])]
    if len(ports) == 0:
        raise ValueError("the port range leaves no port")
    return ports

cdef enum:
    P_TCP = 0
    P_UDP = 1
    P_ICMP = 2
    ST_NEW = 0           # TCP: no reply yet; UDP: unreplied
    ST_EST = 1           # TCP: a reply seen; UDP: replied
    ST_FIN = 2
    ST_RST = 3


cdef inline uint16_t ld16(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline void st16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF


cdef inline uint16_t csum_update(uint16_t hc, uint16_t m, uint16_t m2) noexcept nogil:
    """RFC 1624 eq. 3: HC' = ~(~HC + ~m + m')."""
    cdef uint32_t s = (<uint32_t>(~hc & 0xFFFF)) + (<uint32_t>(~m & 0xFFFF)) + m2
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>(~s & 0xFFFF)


cdef inline uint16_t sum_update(uint16_t sm, uint16_t m, uint16_t m2) noexcept nogil:
    """A pending checksum (the uncomplemented pseudo-header sum of a request): S + ~m + m'."""
    return <uint16_t>(~csum_update(<uint16_t>(~sm & 0xFFFF), m, m2) & 0xFFFF)


cdef inline void fix(uint8_t* field, uint16_t m, uint16_t m2, bint pending, bint udp) noexcept nogil:
    """Update the checksum at field for a word m -> m2 it covers."""
    cdef uint16_t c = ld16(field)
    if udp and c == 0 and not pending:
        return                                  # UDP without a checksum stays without
    if pending:
        c = sum_update(c, m, m2)
    else:
        c = csum_update(c, m, m2)
        if udp and c == 0:
            c = 0xFFFF
    st16(field, c)


cdef inline void set_word(uint8_t* p, uint16_t v, uint8_t* c1, uint8_t* c2, uint8_t* c3,
                          bint pending3, bint udp3) noexcept nogil:
    """Write the 16-bit word at p and update up to three checksums that cover it."""
    cdef uint16_t old = ld16(p)
    if old == v:
        return
    st16(p, v)
    if c1 != NULL:
        fix(c1, old, v, False, False)
    if c2 != NULL:
        fix(c2, old, v, False, False)
    if c3 != NULL:
        fix(c3, old, v, pending3, udp3)


cdef inline void set_addr(uint8_t* p, uint32_t a, uint8_t* c1, uint8_t* c2, uint8_t* c3,
                          bint pending3, bint udp3) noexcept nogil:
    """Write the 4-byte address at p (a in packet order) and update the checksums over it."""
    cdef uint8_t b[4]
    memcpy(b, &a, 4)
    set_word(p, ld16(b), c1, c2, c3, pending3, udp3)
    set_word(p + 2, ld16(b + 2), c1, c2, c3, pending3, udp3)


cdef inline uint32_t wdelta(const uint8_t* old, const uint8_t* new, int words) noexcept nogil:
    """What replacing `words` 16-bit words old -> new adds to a one's complement sum:
    sum(~m + m') over the words that change (RFC 1624 eq. 3, the words summed first)."""
    cdef uint32_t s = 0
    cdef uint16_t m, m2
    cdef int i
    for i in range(words):
        m = ld16(old + 2 * i)
        m2 = ld16(new + 2 * i)
        if m != m2:
            s += (<uint32_t>(~m & 0xFFFF)) + m2
    return s


cdef inline void apply(uint8_t* field, uint32_t d, bint pending, bint udp) noexcept nogil:
    """The checksum at field after words summing to d (wdelta) changed under it: one update
    for all of them, the same bytes as one fix() per word."""
    cdef uint32_t s
    cdef uint16_t c
    if d == 0:
        return
    c = ld16(field)
    if pending:                                 # the uncomplemented pseudo-header sum: S + d
        s = c + d
    else:
        if udp and c == 0:
            return                              # UDP without a checksum stays without
        s = (~c & 0xFFFF) + d
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    c = <uint16_t>s if pending else <uint16_t>(~s & 0xFFFF)
    if udp and c == 0 and not pending:
        c = 0xFFFF
    st16(field, c)


cdef inline void xlate(uint8_t* at, const uint8_t* addr, int words, uint8_t* ipck, uint8_t* pw,
                       uint16_t port, uint8_t* ck, bint pseudo, bint pending, bint udp) noexcept nogil:
    """The translation of one packet's address (words 16-bit words at `at`) and port (the
    word at pw: a port or an ICMP identifier) with one update per checksum: the IPv4
    header's (ipck; NULL for IPv6) over the address, the upper layer's (ck) over the
    address when its pseudo-header holds it (pseudo: TCP, UDP, ICMPv6) and over the port
    unless it is a pending (offloaded) sum, which covers only the pseudo-header."""
    cdef uint32_t da = wdelta(at, addr, words), dp = 0
    cdef uint16_t old = ld16(pw)
    memcpy(at, addr, 2 * words)
    if old != port:
        dp = (<uint32_t>(~old & 0xFFFF)) + port
        st16(pw, port)
    if ipck != NULL:
        apply(ipck, da, False, False)
    apply(ck, (da if pseudo else 0) + (0 if pending else dp), pending, udp)


cdef struct covered:
    uint8_t* at[6]           # words inside an ICMP message that a rewrite may change
    uint16_t old[6]
    int n


cdef inline void cover(covered* c, uint8_t* p) noexcept nogil:
    if p != NULL:
        c.at[c.n] = p
        c.old[c.n] = ld16(p)
        c.n += 1


cdef inline void settle(covered* c, uint8_t* icmp_csum) noexcept nogil:
    """The ICMP checksum follows every covered word that changed."""
    cdef int i
    for i in range(c.n):
        fix(icmp_csum, c.old[i], ld16(c.at[i]), False, False)


cdef inline int pindex(uint8_t proto) noexcept nogil:
    if proto == 6:
        return P_TCP
    if proto == 17:
        return P_UDP
    if proto == 1:
        return P_ICMP
    return -1


cdef class Nat44:
    """NAPT44 state for up to n_uplinks uplinks and capacity mappings."""
    def __cinit__(self, int n_uplinks, uint32_t capacity=65536, seed=None, timeouts=None,
                  port_range=(1024, 65535), avoid=None):
        cdef uint32_t size = 16
        cdef Py_ssize_t i
        if n_uplinks < 1 or n_uplinks > 255:
            raise ValueError("n_uplinks must be 1..255")
        if capacity < 1 or capacity > (1 << 24):
            raise ValueError("capacity must be 1..16777216")
        while size < 2 * capacity:
            size <<= 1
        self.capacity = capacity
        self.n_uplinks = n_uplinks
        self.mask = size - 1
        self.maps = <nat_map*>calloc(capacity, sizeof(nat_map))
        self.slots = <int32_t*>malloc(size * sizeof(int32_t))
        self.rev = <int32_t*>malloc(<size_t>n_uplinks * 3 * 65536 * sizeof(int32_t))
        self.free_ports = <uint32_t*>malloc(<size_t>n_uplinks * 3 * sizeof(uint32_t))
        self.addr = <uint32_t*>calloc(n_uplinks, sizeof(uint32_t))
        self.free_maps = <int32_t*>malloc(capacity * sizeof(int32_t))
        self.frags = <frag_rec*>calloc(FRAG_SLOTS, sizeof(frag_rec))
        plist = port_list(port_range, avoid)
        self.n_ports = len(plist)
        self.ports = <uint16_t*>malloc(self.n_ports * sizeof(uint16_t))
        self.port_ok = <uint8_t*>calloc(65536, 1)
        if self.ports == NULL or self.port_ok == NULL:
            raise MemoryError()
        for i in range(self.n_ports):
            self.ports[i] = plist[i]
            self.port_ok[plist[i]] = 1
        if (self.maps == NULL or self.slots == NULL or self.rev == NULL or self.free_ports == NULL
                or self.addr == NULL or self.free_maps == NULL or self.frags == NULL):
            raise MemoryError()
        memset(self.slots, 0xFF, size * sizeof(int32_t))
        memset(self.rev, 0xFF, <size_t>n_uplinks * 3 * 65536 * sizeof(int32_t))
        for i in range(n_uplinks * 3):
            self.free_ports[i] = self.n_ports
        for i in range(capacity):
            self.free_maps[i] = capacity - 1 - i
        self.n_free = capacity
        key = os.urandom(16) if seed is None else int(seed).to_bytes(16, "little")
        self.k0 = int.from_bytes(key[:8], "little")
        self.k1 = int.from_bytes(key[8:], "little")
        t = dict(TIMEOUTS)
        t.update(timeouts or {})
        self.t_syn, self.t_est, self.t_fin, self.t_rst = t["tcp_syn"], t["tcp_established"], t["tcp_fin"], t["tcp_rst"]
        self.t_udp, self.t_udp2, self.t_icmp = t["udp"], t["udp_replied"], t["icmp"]
        self.exhausted = 0
        self.moved = 0
        self.hinted = 0

    def __dealloc__(self):
        cdef int u
        if self.fwd_in != NULL:
            for u in range(self.n_uplinks):
                free(self.fwd_in[u])
            free(self.fwd_in)
        free(self.maps)
        free(self.slots)
        free(self.rev)
        free(self.free_ports)
        free(self.addr)
        free(self.free_maps)
        free(self.frags)
        free(self.ports)
        free(self.port_ok)

    # ---------------------------------------------------------------- configuration
    def set_address(self, int u, address):
        """The uplink's IPv4 address (4 bytes, an ipaddress object, or None: none).  A change
        drops the uplink's mappings: they were made for the old address."""
        cdef uint32_t a = 0
        cdef bytes b
        if u < 0 or u >= self.n_uplinks:
            raise IndexError("uplink out of range")
        if address is not None:
            b = bytes(address if isinstance(address, (bytes, bytearray)) else address.packed)
            if len(b) != 4:
                raise ValueError("an IPv4 address has 4 bytes")
            memcpy(&a, <const char*>b, 4)
        if a != self.addr[u]:
            self.flush_uplink(u)
            spin_lock(&self.lock)
            self.addr[u] = a
            spin_unlock(&self.lock)
        return None

    def set_forward(self, int u, int proto, int lo, int hi, to_addr, to_lo=None):
        """A [[forward]] on uplink u: TCP (6) or UDP (17) to the uplink's address and a port p
        in lo..hi goes to to_addr (4 bytes), port to_lo + (p - lo) (to_lo None: lo, the same
        port); what that host sends from a port of its range leaves with the uplink's address
        and the external port again.  The external ports leave the mappings' pool (a mapping
        holding one is dropped).  At most 64 forwards; two on one uplink and protocol may not
        share an external port, nor (one LAN host) a port of the host's: its answers could
        not tell which external port they belong to."""
        cdef int pi = pindex(<uint8_t>proto)
        cdef bytes b = bytes(to_addr)
        cdef size_t idx
        cdef int p, k, j, first
        cdef uint32_t to
        cdef uint64_t bits
        cdef uint64_t* fi
        if u < 0 or u >= self.n_uplinks:
            raise IndexError("uplink out of range")
        if pi != P_TCP and pi != P_UDP:
            raise ValueError("a forward is TCP (6) or UDP (17)")
        if not 1 <= lo <= hi <= 65535 or len(b) != 4:
            raise ValueError("ports 1..65535, low to high, and a 4-byte address")
        first = lo if to_lo is None else to_lo
        if not 1 <= first <= 65535 - (hi - lo):
            raise ValueError("the LAN host's ports 1..65535 for the whole range")
        if self.n_fwd >= 64:
            raise ValueError("at most 64 forwards")
        memcpy(&to, <const char*>b, 4)
        if self.fwd_in == NULL:
            self.fwd_in = <uint64_t**>calloc(self.n_uplinks, sizeof(uint64_t*))
            if self.fwd_in == NULL:
                raise MemoryError()
        if self.fwd_in[u] == NULL:
            fi = <uint64_t*>calloc(2 * 65536, sizeof(uint64_t))
            if fi == NULL:
                raise MemoryError()
            spin_lock(&self.lock)
            self.fwd_in[u] = fi
            spin_unlock(&self.lock)
        fi = self.fwd_in[u] + pi * 65536
        for p in range(lo, hi + 1):
            if self.rev[(<size_t>u * 3 + pi) * 65536 + p] <= -2:
                raise ValueError(f"port {p} is another forward's on this uplink")
        for p in range(first, first + hi - lo + 1):
            bits = fi[p]
            for j in range(64):
                if bits >> j & 1 and self.fwd_to[j] == to:
                    raise ValueError(f"the LAN host's port {p} is another forward's on this uplink")
        k = self.n_fwd
        self.fwd_to[k] = to
        self.fwd_lo[k] = lo
        self.fwd_to_lo[k] = first
        spin_lock(&self.lock)
        for p in range(lo, hi + 1):
            idx = (<size_t>u * 3 + pi) * 65536 + p
            if self.rev[idx] >= 0:
                self.release(self.rev[idx])
            self.rev[idx] = -2 - k            # create() passes it by (free_ports counts mappings)
        for p in range(first, first + hi - lo + 1):
            fi[p] |= (<uint64_t>1) << k
        self.n_fwd += 1
        spin_unlock(&self.lock)

    cdef inline int fwd_host(self, int u, int pi, uint32_t addr, uint16_t port) noexcept nogil:
        """The forward whose LAN host is addr (packet order) with port (host order) in its
        range on uplink u, or -1: one array load, then the (rare) forwards that share the port."""
        cdef uint64_t* fi
        cdef uint64_t bits
        cdef int k
        if self.fwd_in == NULL or self.fwd_in[u] == NULL or pi > P_UDP:
            return -1
        fi = self.fwd_in[u]
        bits = fi[pi * 65536 + port]
        while bits:
            k = ctz64(bits)
            if self.fwd_to[k] == addr:
                return k
            bits &= bits - 1
        return -1

    def address(self, int u):
        if u < 0 or u >= self.n_uplinks:
            raise IndexError("uplink out of range")
        return None if self.addr[u] == 0 else (<char*>&self.addr[u])[:4]

    def flush_uplink(self, int u):
        """Forget every mapping of uplink u; returns how many."""
        cdef uint32_t i, k = 0
        with nogil:
            spin_lock(&self.lock)
            for i in range(self.capacity):
                if self.maps[i].used and self.maps[i].uplink == u:
                    self.release(i)
                    k += 1
            spin_unlock(&self.lock)
        return k

    # ---------------------------------------------------------------- the table
    cdef inline uint32_t key_hash(self, uint32_t int_addr, uint32_t rem_addr, uint16_t int_port,
                                  uint16_t rem_port, uint8_t proto, uint8_t u) noexcept nogil:
        cdef uint8_t k[16]
        memcpy(k, &int_addr, 4)
        memcpy(k + 4, &rem_addr, 4)
        memcpy(k + 8, &int_port, 2)
        memcpy(k + 10, &rem_port, 2)
        k[12] = proto
        k[13] = u
        k[14] = 0
        k[15] = 0
        return siphash13(k, 2, self.k0, self.k1)

    cdef inline int32_t find(self, uint32_t h, uint32_t int_addr, uint32_t rem_addr, uint16_t int_port,
                             uint16_t rem_port, uint8_t proto, uint8_t u) noexcept nogil:
        cdef uint32_t i = h & self.mask
        cdef int32_t m
        cdef nat_map* e
        while True:
            m = self.slots[i]
            if m < 0:
                return -1
            e = &self.maps[m]
            if (e.hash == h and e.int_addr == int_addr and e.rem_addr == rem_addr and e.int_port == int_port
                    and e.rem_port == rem_port and e.proto == proto and e.uplink == u):
                return m
            i = (i + 1) & self.mask

    cdef void release(self, uint32_t m) noexcept nogil:
        """Remove mapping m: its slot (backward-shift deletion), its port, its index."""
        cdef nat_map* e = &self.maps[m]
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
            home = self.maps[s].hash & self.mask
            # s may move into the hole at i if its home is not in (i, j] (cyclically)
            if (j > i and (home <= i or home > j)) or (j < i and (home <= i and home > j)):
                self.slots[i] = s
                i = j
        self.slots[i] = -1
        self.rev[(<size_t>e.uplink * 3 + e.proto) * 65536 + e.ext_port] = -1
        self.free_ports[e.uplink * 3 + e.proto] += 1
        e.used = 0
        self.free_maps[self.n_free] = m
        self.n_free += 1

    cdef int32_t create(self, uint32_t h, uint32_t int_addr, uint32_t rem_addr, uint16_t int_port,
                        uint16_t rem_port, uint8_t proto, uint8_t u, double now) noexcept nogil:
        """A new mapping with a port of its own; -1 when no port or slot is left."""
        cdef int32_t* rv = self.rev + (<size_t>u * 3 + proto) * 65536
        cdef uint32_t want = ld16(<uint8_t*>&int_port), p, tries
        cdef int32_t m
        cdef uint32_t i
        cdef nat_map* e
        if self.n_free == 0 or self.free_ports[u * 3 + proto] == 0:
            self.exhausted += 1
            return -1
        if self.port_ok[want] and rv[want] == -1:
            p = want
        else:
            i = (h >> 8) % self.n_ports
            tries = 0
            while rv[self.ports[i]] != -1:          # a mapping's, or a forward's (<= -2)
                i += 1
                if i == self.n_ports:
                    i = 0
                tries += 1
                if tries >= self.n_ports:
                    self.exhausted += 1
                    return -1
            p = self.ports[i]
        self.n_free -= 1
        m = self.free_maps[self.n_free]
        e = &self.maps[m]
        e.int_addr = int_addr
        e.rem_addr = rem_addr
        e.int_port = int_port
        e.rem_port = rem_port
        e.ext_port = <uint16_t>p
        e.proto = proto
        e.uplink = u
        e.state = ST_NEW
        e.used = 1
        e.hash = h
        e.last = now
        rv[p] = m
        self.free_ports[u * 3 + proto] -= 1
        i = h & self.mask
        while self.slots[i] >= 0:
            i = (i + 1) & self.mask
        self.slots[i] = m
        return m

    cdef inline void tcp_state(self, nat_map* e, uint8_t flags, bint reply) noexcept nogil:
        if flags & 0x04:
            e.state = ST_RST
        elif flags & 0x01:
            e.state = ST_FIN
        elif reply and e.state == ST_NEW:
            e.state = ST_EST

    cdef inline double timeout(self, const nat_map* e) noexcept nogil:
        if e.proto == P_TCP:
            if e.state == ST_EST:
                return self.t_est
            if e.state == ST_FIN:
                return self.t_fin
            if e.state == ST_RST:
                return self.t_rst
            return self.t_syn
        if e.proto == P_UDP:
            return self.t_udp2 if e.state == ST_EST else self.t_udp
        return self.t_icmp

    def expire(self, double now):
        """Forget mappings idle past their timeout; returns how many."""
        cdef uint32_t i, k = 0
        with nogil:
            spin_lock(&self.lock)
            for i in range(self.capacity):
                if self.maps[i].used and now - self.maps[i].last > self.timeout(&self.maps[i]):
                    self.release(i)
                    k += 1
            for i in range(FRAG_SLOTS):
                if self.frags[i].rem_addr and now - self.frags[i].last > FRAG_TIMEOUT:
                    memset(&self.frags[i], 0, sizeof(frag_rec))
            spin_unlock(&self.lock)
        return k

    cdef inline uint32_t frag_slot(self, uint32_t rem_addr, uint16_t ip_id, uint8_t proto, uint8_t u) noexcept nogil:
        cdef uint8_t k[8]
        memcpy(k, &rem_addr, 4)
        memcpy(k + 4, &ip_id, 2)
        k[6] = proto
        k[7] = u
        return siphash13(k, 1, self.k0, self.k1) % FRAG_SLOTS

    # ---------------------------------------------------------------- out: LAN -> uplink
    cdef int out4(self, uint8_t* ip, uint32_t n, int u, double now, bint pending, int32_t* hint) noexcept nogil:
        """Translate one packet LAN -> uplink u (the workers share the translator: locked).
        hint (NULL: none) is the caller's memory of this packet's flow: the mapping it had
        last time, checked against the key before it is used, and set to the one it has now."""
        cdef int rc
        spin_lock(&self.lock)
        rc = self.out4_locked(ip, n, u, now, pending, hint)
        spin_unlock(&self.lock)
        return rc

    cdef int in4(self, uint8_t* ip, uint32_t n, int u, double now, bint pending) noexcept nogil:
        """Translate one packet uplink u -> LAN (locked)."""
        cdef int rc
        spin_lock(&self.lock)
        rc = self.in4_locked(ip, n, u, now, pending)
        spin_unlock(&self.lock)
        return rc

    cdef int out4_locked(self, uint8_t* ip, uint32_t n, int u, double now, bint pending,
                         int32_t* hint) noexcept nogil:
        cdef uint32_t ihl, tot, l4, src, dst, ext, h
        cdef int v, k
        cdef uint16_t ext_port
        cdef uint16_t sport, dport, frag
        cdef uint8_t proto, t
        cdef int pi
        cdef int32_t m
        cdef uint8_t* ck
        cdef nat_map* e
        if u < 0 or u >= self.n_uplinks:
            return NAT_PASS
        ext = self.addr[u]
        if ext == 0:
            return NAT_NO_ADDRESS
        if n < 20 or (ip[0] >> 4) != 4:
            return NAT_MALFORMED
        ihl = (ip[0] & 15) * 4
        tot = ld16(ip + 2)
        if ihl < 20 or ihl > n or tot < ihl:
            return NAT_MALFORMED
        if tot < n:
            n = tot
        proto = ip[9]
        frag = ld16(ip + 6)
        memcpy(&src, ip + 12, 4)
        memcpy(&dst, ip + 16, 4)
        l4 = ihl
        if frag & 0x1FFF:                     # a later fragment: its address only
            set_addr(ip + 12, ext, ip + 10, NULL, NULL, False, False)
            return NAT_OK
        pi = pindex(proto)
        if pi < 0:
            return NAT_UNSUPPORTED
        if pi == P_ICMP:
            if l4 + 8 > n:
                return NAT_MALFORMED
            t = ip[l4]
            if t == 3 or t == 11 or t == 12:
                return self.out_error(ip, n, l4, u, ext)
            if t != 8:
                return NAT_UNSUPPORTED
            memcpy(&sport, ip + l4 + 4, 2)     # the identifier stands for the port
            dport = 0
        else:
            if l4 + (20 if pi == P_TCP else 8) > n:
                return NAT_MALFORMED
            memcpy(&sport, ip + l4, 2)
            memcpy(&dport, ip + l4 + 2, 2)
            if self.n_fwd:
                k = self.fwd_host(u, pi, src, ld16(ip + l4))
                if k >= 0:
                    # a forwarded connection's host answering: the uplink's address, and the
                    # external port its LAN port stands for
                    ck = ip + l4 + (16 if pi == P_TCP else 6)
                    set_addr(ip + 12, ext, ip + 10, NULL, ck, pending, pi == P_UDP)
                    ext_port = self.fwd_lo[k] + (ld16(ip + l4) - self.fwd_to_lo[k])
                    if pi == P_TCP:
                        set_word(ip + l4, ext_port, ck if not pending else NULL, NULL, NULL, False, False)
                    else:
                        set_word(ip + l4, ext_port, NULL, NULL, ck if not pending else NULL, False, True)
                    return NAT_OK
        m = -1
        if hint != NULL and hint[0] >= 0 and <uint32_t>hint[0] < self.capacity:
            e = &self.maps[hint[0]]           # the flow's mapping last time: still this key's?
            if (e.used and e.int_addr == src and e.rem_addr == dst and e.int_port == sport
                    and e.rem_port == dport and e.proto == pi and e.uplink == u):
                m = hint[0]
                self.hinted += 1
        if m < 0:
            h = self.key_hash(src, dst, sport, dport, pi, u)
            m = self.find(h, src, dst, sport, dport, pi, u)
            if m < 0:
                m = self.create(h, src, dst, sport, dport, pi, u, now)
                if m < 0:
                    return NAT_EXHAUSTED
                for v in range(self.n_uplinks):      # failover moved it: its translation changed
                    if v != u and self.find(self.key_hash(src, dst, sport, dport, pi, v), src, dst, sport, dport,
                                            pi, v) >= 0:
                        self.moved += 1
                        break
            if hint != NULL:
                hint[0] = m
        e = &self.maps[m]
        e.last = now
        if pi == P_TCP:
            self.tcp_state(e, ip[l4 + 13], False)
            xlate(ip + 12, <uint8_t*>&ext, 2, ip + 10, ip + l4, e.ext_port, ip + l4 + 16, True, pending, False)
        elif pi == P_UDP:
            xlate(ip + 12, <uint8_t*>&ext, 2, ip + 10, ip + l4, e.ext_port, ip + l4 + 6, True, pending, True)
        else:
            xlate(ip + 12, <uint8_t*>&ext, 2, ip + 10, ip + l4 + 4, e.ext_port, ip + l4 + 2, False, False, False)
        return NAT_OK

    cdef int out_error(self, uint8_t* ip, uint32_t n, uint32_t l4, int u, uint32_t ext) noexcept nogil:
        """A LAN host's ICMP error about a packet that came in through the NAT: the quoted
        packet (remote -> LAN host) is put back as the remote sent it (-> ext address, port)."""
        cdef uint8_t* q = ip + l4 + 8
        cdef uint32_t qn = n - l4 - 8, qihl, qsrc, qdst
        cdef uint16_t qsport, qdport
        cdef int pi, k
        cdef int32_t m
        cdef uint16_t ext_port
        cdef uint8_t* ic = ip + l4 + 2
        cdef uint8_t* qck = NULL
        cdef uint32_t h
        cdef covered c
        if qn < 20 or (q[0] >> 4) != 4:
            return NAT_MALFORMED
        qihl = (q[0] & 15) * 4
        if qihl < 20 or qihl + 8 > qn:
            return NAT_MALFORMED
        pi = pindex(q[9])
        if pi < 0:
            return NAT_UNSUPPORTED
        memcpy(&qsrc, q + 12, 4)
        memcpy(&qdst, q + 16, 4)
        if pi == P_ICMP:
            if q[qihl] != 0:                  # only an echo reply can be quoted back
                return NAT_UNSUPPORTED
            memcpy(&qdport, q + qihl + 4, 2)
            qsport = 0
        else:
            memcpy(&qsport, q + qihl, 2)
            memcpy(&qdport, q + qihl + 2, 2)
        k = -1
        if self.n_fwd and pi != P_ICMP:
            # about a packet a [[forward]] brought its host (any remote): the external port
            k = self.fwd_host(u, pi, qdst, ld16(q + qihl + 2))
        if k >= 0:
            ext_port = self.fwd_lo[k] + (ld16(q + qihl + 2) - self.fwd_to_lo[k])
        else:
            h = self.key_hash(qdst, qsrc, qdport, qsport, pi, u)
            m = self.find(h, qdst, qsrc, qdport, qsport, pi, u)
            if m < 0:
                return NAT_UNKNOWN
            ext_port = self.maps[m].ext_port
        if pi == P_TCP and qihl + 18 <= qn:
            qck = q + qihl + 16
        elif pi == P_UDP:
            qck = q + qihl + 6
        elif pi == P_ICMP:
            qck = q + qihl + 2
        # the quoted packet: destination address and port (identifier) back to the outside;
        # every word of the ICMP message that changes (checksums inside it too) moves its sum
        c.n = 0
        cover(&c, q + 16)
        cover(&c, q + 18)
        cover(&c, q + 10)
        cover(&c, qck)
        cover(&c, q + qihl + (4 if pi == P_ICMP else 2))
        if pi == P_UDP:       # the quoted UDP checksum: 0 stays 0
            set_addr(q + 16, ext, q + 10, NULL, qck, False, True)
            set_word(q + qihl + 2, ext_port, NULL, NULL, qck, False, True)
        elif pi == P_TCP:
            set_addr(q + 16, ext, q + 10, qck, NULL, False, False)
            set_word(q + qihl + 2, ext_port, qck, NULL, NULL, False, False)
        else:
            set_addr(q + 16, ext, q + 10, NULL, NULL, False, False)
            set_word(q + qihl + 4, ext_port, qck, NULL, NULL, False, False)
        settle(&c, ic)
        set_addr(ip + 12, ext, ip + 10, NULL, NULL, False, False)
        return NAT_OK

    # ---------------------------------------------------------------- in: uplink -> LAN
    cdef int in4_locked(self, uint8_t* ip, uint32_t n, int u, double now, bint pending) noexcept nogil:
        cdef uint32_t ihl, tot, l4, src, dst, slot
        cdef uint16_t sport, dport, frag, ip_id, port
        cdef uint8_t proto, t
        cdef int pi
        cdef int32_t m
        cdef uint8_t* ck
        cdef nat_map* e
        cdef frag_rec* fr
        if u < 0 or u >= self.n_uplinks or self.addr[u] == 0:
            return NAT_PASS
        if n < 20 or (ip[0] >> 4) != 4:
            return NAT_MALFORMED
        ihl = (ip[0] & 15) * 4
        tot = ld16(ip + 2)
        if ihl < 20 or ihl > n or tot < ihl:
            return NAT_MALFORMED
        if tot < n:
            n = tot
        memcpy(&dst, ip + 16, 4)
        if dst != self.addr[u]:
            return NAT_PASS
        memcpy(&src, ip + 12, 4)
        proto = ip[9]
        frag = ld16(ip + 6)
        memcpy(&ip_id, ip + 4, 2)
        l4 = ihl
        if frag & 0x1FFF:                     # a later fragment: where its first one went
            slot = self.frag_slot(src, ip_id, proto, u)
            fr = &self.frags[slot]
            if fr.rem_addr != src or fr.ip_id != ip_id or fr.proto != proto or fr.uplink != u or fr.int_addr == 0:
                return NAT_PASS               # not a translated datagram's: the router's own
            fr.last = now
            set_addr(ip + 16, fr.int_addr, ip + 10, NULL, NULL, False, False)
            return NAT_OK
        pi = pindex(proto)
        if pi < 0:
            return NAT_PASS                   # GRE, ESP, ... to the router: its own
        if pi == P_ICMP:
            if l4 + 8 > n:
                return NAT_MALFORMED
            t = ip[l4]
            if t == 3 or t == 11 or t == 12:
                return self.in_error(ip, n, l4, u)
            if t != 0:
                return NAT_PASS               # an echo request to the router is the router's
            port = ld16(ip + l4 + 4)
            sport = 0
        else:
            if l4 + (20 if pi == P_TCP else 8) > n:
                return NAT_MALFORMED
            port = ld16(ip + l4 + 2)
            memcpy(&sport, ip + l4, 2)
            if self.n_fwd:
                m = self.rev[(<size_t>u * 3 + pi) * 65536 + port]
                if m <= -2:
                    # a [[forward]]'s port: to its LAN host and the port there
                    m = -2 - m
                    ck = ip + l4 + (16 if pi == P_TCP else 6)
                    set_addr(ip + 16, self.fwd_to[m], ip + 10, NULL, ck, pending, pi == P_UDP)
                    if pi == P_TCP:
                        set_word(ip + l4 + 2, self.fwd_to_lo[m] + (port - self.fwd_lo[m]),
                                 ck if not pending else NULL, NULL, NULL, False, False)
                    else:
                        set_word(ip + l4 + 2, self.fwd_to_lo[m] + (port - self.fwd_lo[m]),
                                 NULL, NULL, ck if not pending else NULL, False, True)
                    if frag & 0x2000:
                        fr = &self.frags[self.frag_slot(src, ip_id, proto, u)]
                        fr.rem_addr = src
                        fr.int_addr = self.fwd_to[m]
                        fr.ip_id = ip_id
                        fr.proto = proto
                        fr.uplink = u
                        fr.last = now
                    return NAT_OK
        m = self.rev[(<size_t>u * 3 + pi) * 65536 + port]     # (only the pool's ports have mappings)
        if m < 0 or self.maps[m].rem_addr != src or self.maps[m].rem_port != sport:
            if not self.port_ok[port]:
                return NAT_PASS               # outside the mappings' ports: the router's own
            # no mapping, or not the remote it was opened to: unsolicited (an echo reply
            # may still be the router's own ping)
            return NAT_PASS if pi == P_ICMP else NAT_UNKNOWN
        e = &self.maps[m]
        e.last = now
        if pi == P_TCP:
            self.tcp_state(e, ip[l4 + 13], True)
            xlate(ip + 16, <uint8_t*>&e.int_addr, 2, ip + 10, ip + l4 + 2, ld16(<uint8_t*>&e.int_port),
                  ip + l4 + 16, True, pending, False)
        elif pi == P_UDP:
            e.state = ST_EST
            xlate(ip + 16, <uint8_t*>&e.int_addr, 2, ip + 10, ip + l4 + 2, ld16(<uint8_t*>&e.int_port),
                  ip + l4 + 6, True, pending, True)
        else:
            xlate(ip + 16, <uint8_t*>&e.int_addr, 2, ip + 10, ip + l4 + 4, ld16(<uint8_t*>&e.int_port),
                  ip + l4 + 2, False, False, False)
        if frag & 0x2000:                     # a first fragment: the later ones follow it
            fr = &self.frags[self.frag_slot(src, ip_id, proto, u)]
            fr.rem_addr = src
            fr.int_addr = e.int_addr
            fr.ip_id = ip_id
            fr.proto = proto
            fr.uplink = u
            fr.last = now
        return NAT_OK

    cdef int in_error(self, uint8_t* ip, uint32_t n, uint32_t l4, int u) noexcept nogil:
        """An ICMP error about a packet the NAT sent: it must quote that packet (from the
        uplink's address and a mapped port to the mapping's remote); the quote is put back as
        the LAN host sent it and the error goes to the LAN host."""
        cdef uint8_t* q = ip + l4 + 8
        cdef uint32_t qn = n - l4 - 8, qihl, qsrc, qdst
        cdef uint16_t qdport, port
        cdef int pi
        cdef int32_t m
        cdef nat_map* e
        cdef uint8_t* ic = ip + l4 + 2
        cdef uint8_t* qck = NULL
        cdef uint32_t h, int_addr
        cdef uint16_t int_port
        cdef covered c
        if qn < 20 or (q[0] >> 4) != 4:
            return NAT_MALFORMED
        qihl = (q[0] & 15) * 4
        if qihl < 20 or qihl + 8 > qn:
            return NAT_MALFORMED
        pi = pindex(q[9])
        if pi < 0:
            return NAT_PASS
        memcpy(&qsrc, q + 12, 4)
        memcpy(&qdst, q + 16, 4)
        if qsrc != self.addr[u]:
            return NAT_PASS
        if pi == P_ICMP:
            if q[qihl] != 8:
                return NAT_PASS
            port = ld16(q + qihl + 4)
            qdport = 0
        else:
            port = ld16(q + qihl)
            memcpy(&qdport, q + qihl + 2, 2)
        m = self.rev[(<size_t>u * 3 + pi) * 65536 + port]
        if self.n_fwd and m <= -2 and pi != P_ICMP:
            # about a forwarded connection (any remote): back to the forward's host and its port
            int_addr = self.fwd_to[-2 - m]
            int_port = self.fwd_to_lo[-2 - m] + (port - self.fwd_lo[-2 - m])
        else:
            if not self.port_ok[port]:
                return NAT_PASS
            if m < 0 or self.maps[m].rem_addr != qdst or self.maps[m].rem_port != qdport:
                return NAT_PASS if pi == P_ICMP else NAT_UNKNOWN
            e = &self.maps[m]
            int_addr = e.int_addr
            int_port = ld16(<uint8_t*>&e.int_port)
        if pi == P_TCP and qihl + 18 <= qn:
            qck = q + qihl + 16
        elif pi == P_UDP:
            qck = q + qihl + 6
        elif pi == P_ICMP:
            qck = q + qihl + 2
        c.n = 0
        cover(&c, q + 12)
        cover(&c, q + 14)
        cover(&c, q + 10)
        cover(&c, qck)
        cover(&c, q + qihl + (4 if pi == P_ICMP else 0))
        if pi == P_UDP:       # the quoted UDP checksum: 0 stays 0
            set_addr(q + 12, int_addr, q + 10, NULL, qck, False, True)
            set_word(q + qihl, int_port, NULL, NULL, qck, False, True)
        elif pi == P_TCP:
            set_addr(q + 12, int_addr, q + 10, qck, NULL, False, False)
            set_word(q + qihl, int_port, qck, NULL, NULL, False, False)
        else:
            set_addr(q + 12, int_addr, q + 10, NULL, NULL, False, False)
            set_word(q + qihl + 4, int_port, qck, NULL, NULL, False, False)
        settle(&c, ic)
        set_addr(ip + 16, int_addr, ip + 10, NULL, NULL, False, False)
        return NAT_OK

    # ---------------------------------------------------------------- Python entry points
    def out_packet(self, bytearray pkt, int u, double now, bint pending=False):
        """Translate one IPv4 packet (LAN -> uplink u) in place; returns the NAT_* name."""
        cdef uint8_t* p = <uint8_t*>(<char*>pkt)
        return NAMES[self.out4(p, len(pkt), u, now, pending, NULL)]

    def in_packet(self, bytearray pkt, int u, double now, bint pending=False):
        """Translate one IPv4 packet (uplink u -> LAN) in place; returns the NAT_* name."""
        cdef uint8_t* p = <uint8_t*>(<char*>pkt)
        return NAMES[self.in4(p, len(pkt), u, now, pending)]

    def out_batch(self, uint8_t[::1] buf, const long[::1] offsets, const long[::1] lengths,
                  const int[::1] uplinks, double now, long n=-1):
        """out_packet over n packets of buf (offsets at their IP headers); codes as uint8."""
        return self._batch(buf, offsets, lengths, uplinks, now, n, True)

    def in_batch(self, uint8_t[::1] buf, const long[::1] offsets, const long[::1] lengths,
                 const int[::1] uplinks, double now, long n=-1):
        return self._batch(buf, offsets, lengths, uplinks, now, n, False)

    def _batch(self, uint8_t[::1] buf, const long[::1] offsets, const long[::1] lengths,
               const int[::1] uplinks, double now, long n, bint out):
        cdef long i, total = buf.shape[0]
        if n < 0:
            n = offsets.shape[0]
        if n > offsets.shape[0] or n > lengths.shape[0] or n > uplinks.shape[0]:
            raise ValueError("n is larger than the arrays")
        for i in range(n):
            if offsets[i] < 0 or lengths[i] < 0 or offsets[i] > total or lengths[i] > total - offsets[i]:
                raise ValueError(f"packet {i} lies outside the buffer")
        codes = np.zeros(n, np.uint8)
        cdef uint8_t[::1] c = codes
        with nogil:
            for i in range(n):
                c[i] = self.one(&buf[0] + offsets[i], lengths[i], uplinks[i], now, out)
        return codes

    cdef int one(self, uint8_t* ip, uint32_t n, int u, double now, bint out) noexcept nogil:
        """One packet of a batch (Nat66 translates IPv6 here)."""
        return self.out4(ip, n, u, now, False, NULL) if out else self.in4(ip, n, u, now, False)

    def mapping(self, int proto, int_addr, int int_port, rem_addr, int rem_port, int u):
        """The external port of a mapping (addresses as 4 bytes, ports as numbers), or None."""
        cdef uint32_t a, r
        cdef uint16_t ip_, rp
        cdef int pi = pindex(proto)
        if pi < 0 or u < 0 or u >= self.n_uplinks:
            return None
        cdef bytes ia = bytes(int_addr), ra = bytes(rem_addr)
        if len(ia) != 4 or len(ra) != 4:
            raise ValueError("IPv4 addresses have 4 bytes")
        memcpy(&a, <const char*>ia, 4)
        memcpy(&r, <const char*>ra, 4)
        ip_ = ((int_port & 0xFF) << 8) | (int_port >> 8)        # packet order
        rp = ((rem_port & 0xFF) << 8) | (rem_port >> 8)
        spin_lock(&self.lock)
        m = self.find(self.key_hash(a, r, ip_, rp, pi, u), a, r, ip_, rp, pi, u)
        port = -1 if m < 0 else self.maps[m].ext_port
        spin_unlock(&self.lock)
        return None if port < 0 else port

    def stats(self):
        """Mappings in use and free ports per uplink and protocol, exhaustion events."""
        cdef int u, p
        out = {"mappings": self.capacity - self.n_free, "capacity": self.capacity, "ports": self.n_ports,
               "exhausted": self.exhausted, "moved": self.moved, "uplinks": []}
        for u in range(self.n_uplinks):
            out["uplinks"].append({name: self.n_ports - self.free_ports[u * 3 + p]
                                   for p, name in enumerate(("tcp", "udp", "icmp"))})
        return out

    def __len__(self):
        return self.capacity - self.n_free

    @property
    def bytes_per_mapping(self):
        """Memory per mapping: the record, its share of the forward table and the free stack
        (the reverse arrays are per uplink: 768 KiB each, whatever the load)."""
        return sizeof(nat_map) + (self.mask + 1) * sizeof(int32_t) // self.capacity + sizeof(int32_t)


# ==================================================================== NPTv6 (RFC 6296)

cdef inline uint32_t ones16(const uint8_t* a) noexcept nogil:
    cdef uint32_t s = 0
    cdef int i
    for i in range(8):
        s += ld16(a + 2 * i)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


cdef inline bint in_prefix(const uint8_t* a, const npt_map* m, bint outer) noexcept nogil:
    cdef int i
    cdef const uint8_t* p = &m.inner[0]
    if outer:
        p = &m.outer[0]
    for i in range(16):
        if (a[i] & m.mask[i]) != p[i]:
            return False
    return True


cdef inline bint avoided(const uint8_t* a, const npt_map* m) noexcept nogil:
    cdef int k
    for k in range(m.n_avoid):
        if memcmp(a, m.avoid[k], 16) == 0:
            return True
    return False


cdef int npt_map_addr(uint8_t* a, const npt_map* m, bint out) noexcept nogil:
    """Rewrite address a from one prefix to the other, checksum-neutrally: the prefix bits
    change and one 16-bit word takes the difference (bits 48-63 for a /48 or shorter prefix,
    else the first word of the interface identifier that is not 0xFFFF)."""
    cdef const uint8_t* to = &m.inner[0]
    cdef uint16_t adj = m.adj_in
    if out:
        to = &m.outer[0]
        adj = m.adj_out
    cdef int i, w = -1
    cdef uint32_t v
    if m.plen <= 48:
        if ld16(a + 6) == 0xFFFF:
            return NAT_UNSUPPORTED
        w = 3
    else:
        for i in range(4, 8):
            if ld16(a + 2 * i) != 0xFFFF:
                w = i
                break
        if w < 0:
            return NAT_UNSUPPORTED
    for i in range(16):
        a[i] = (to[i] & m.mask[i]) | (a[i] & ~m.mask[i])
    v = <uint32_t>ld16(a + 2 * w) + adj
    v = (v & 0xFFFF) + (v >> 16)
    if v == 0xFFFF:
        v = 0
    st16(a + 2 * w, <uint16_t>v)
    return NAT_OK


cdef int map_one(uint8_t* a, const npt_map* m, bint out) noexcept nogil:
    """a mapped in place when it is in the prefix it leaves and neither it (in) nor what it
    becomes (out) is an address to avoid: NAT_OK, else NAT_PASS or NAT_UNSUPPORTED."""
    cdef int rc
    cdef uint8_t t[16]
    if not in_prefix(a, m, not out):
        return NAT_PASS
    if not out and avoided(a, m):
        return NAT_PASS
    memcpy(t, a, 16)
    rc = npt_map_addr(t, m, out)
    if rc == NAT_OK and out and avoided(t, m):
        return NAT_UNSUPPORTED                  # (the packet untouched, as every refusal)
    if rc == NAT_OK:
        memcpy(a, t, 16)
    return rc


cdef inline uint32_t quoted6(const uint8_t* ip, uint32_t n) noexcept nogil:
    """Where the packet quoted by an ICMPv6 error starts (0: not an ICMPv6 error), walking
    hop-by-hop, routing and destination options headers."""
    cdef uint32_t off = 40
    cdef uint8_t nh = ip[6]
    cdef int k
    for k in range(8):
        if nh == 58:
            if off + 8 + 40 <= n and ip[off] < 128:
                return off + 8
            return 0
        if nh != 0 and nh != 43 and nh != 60:
            return 0
        if off + 8 > n:
            return 0
        nh = ip[off]
        off += (<uint32_t>ip[off + 1] + 1) * 8
    return 0


cdef class Npt66:
    """RFC 6296 per uplink: the LAN prefix and the uplink's prefix of the same length."""

    def __cinit__(self, int n_uplinks):
        if n_uplinks < 1 or n_uplinks > 255:
            raise ValueError("n_uplinks must be 1..255")
        self.n_uplinks = n_uplinks
        self.maps = <npt_map*>calloc(n_uplinks, sizeof(npt_map))
        if self.maps == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.maps)

    def set_prefixes(self, int u, inner, outer, avoid=()):
        """inner, outer: ipaddress.IPv6Network of one length (at most /64), or None: off.
        avoid: up to NPT_AVOID addresses in outer that are in use on the uplink's link (the
        router's own, the gateway's): a LAN source that would map onto one is not translated
        (untranslatable), a packet to one is not the LAN's (pass)."""
        cdef npt_map* m
        cdef uint32_t si, so
        cdef bytes ib, ob, mb
        cdef int k
        if u < 0 or u >= self.n_uplinks:
            raise IndexError("uplink out of range")
        m = &self.maps[u]
        if inner is None or outer is None:
            spin_lock(&self.lock)
            m.active = 0
            spin_unlock(&self.lock)
            return
        if inner.prefixlen != outer.prefixlen or inner.prefixlen > 64 or inner.version != 6 or outer.version != 6:
            raise ValueError("NPTv6 needs two IPv6 prefixes of one length, /64 or shorter")
        av = [ipaddress.IPv6Address(a).packed for a in avoid]
        if len(av) > NPT_AVOID:
            raise ValueError(f"at most {NPT_AVOID} addresses to avoid")
        ib, ob, mb = inner.network_address.packed, outer.network_address.packed, inner.netmask.packed
        spin_lock(&self.lock)
        memcpy(m.inner, <const char*>ib, 16)
        memcpy(m.outer, <const char*>ob, 16)
        memcpy(m.mask, <const char*>mb, 16)
        m.plen = inner.prefixlen
        si, so = ones16(m.inner), ones16(m.outer)
        # the word that takes the difference moves against the prefix: out, inner - outer
        m.adj_out = <uint16_t>((si + (~so & 0xFFFF)) % 0xFFFF)
        m.adj_in = <uint16_t>((so + (~si & 0xFFFF)) % 0xFFFF)
        for k in range(len(av)):
            memcpy(m.avoid[k], <const char*>av[k], 16)
        m.n_avoid = len(av)
        m.active = 1
        spin_unlock(&self.lock)

    def hold(self, int u, inner):
        """The uplink has no prefix to map onto (yet): IPv6 from the LAN prefix inner that
        would leave through it is dropped (no_address) instead of leaving untranslated."""
        cdef npt_map* m
        cdef bytes ib, mb
        if u < 0 or u >= self.n_uplinks:
            raise IndexError("uplink out of range")
        if inner.version != 6 or inner.prefixlen > 64:
            raise ValueError("NPTv6 holds an IPv6 prefix, /64 or shorter")
        ib, mb = inner.network_address.packed, inner.netmask.packed
        m = &self.maps[u]
        spin_lock(&self.lock)
        memcpy(m.inner, <const char*>ib, 16)
        memcpy(m.mask, <const char*>mb, 16)
        m.plen = inner.prefixlen
        m.n_avoid = 0
        m.active = NPT_HELD
        spin_unlock(&self.lock)

    def address(self, int u, addr, bint out):
        """One address mapped as a packet's would be (out: LAN -> uplink u's prefix, else
        back), or None (not in the prefix it leaves, not mappable, an address to avoid, the
        uplink not mapping); for the control side (proxy neighbour discovery)."""
        cdef uint8_t a[16]
        cdef bytes b = ipaddress.IPv6Address(addr).packed
        cdef int rc = NAT_PASS
        if u < 0 or u >= self.n_uplinks:
            raise IndexError("uplink out of range")
        memcpy(a, <const char*>b, 16)
        spin_lock(&self.lock)
        if self.maps[u].active == 1:
            rc = map_one(a, &self.maps[u], out)
        spin_unlock(&self.lock)
        return ipaddress.IPv6Address(bytes(a[:16])) if rc == NAT_OK else None

    cdef int out6(self, uint8_t* ip, uint32_t n, int u) noexcept nogil:
        cdef int rc
        spin_lock(&self.lock)
        rc = self.out6_locked(ip, n, u)
        spin_unlock(&self.lock)
        return rc

    cdef int in6(self, uint8_t* ip, uint32_t n, int u) noexcept nogil:
        cdef int rc
        spin_lock(&self.lock)
        rc = self.in6_locked(ip, n, u)
        spin_unlock(&self.lock)
        return rc

    cdef int out6_locked(self, uint8_t* ip, uint32_t n, int u) noexcept nogil:
        """LAN -> uplink u: a source in the LAN prefix takes the uplink's (and an ICMPv6
        error's quoted destination with it); held (no prefix yet): dropped, no_address."""
        cdef npt_map* m
        cdef uint32_t q
        cdef int rc
        if u < 0 or u >= self.n_uplinks or not self.maps[u].active:
            return NAT_PASS
        m = &self.maps[u]
        if n < 40 or (ip[0] >> 4) != 6:
            return NAT_MALFORMED
        if m.active == NPT_HELD:
            return NAT_NO_ADDRESS if in_prefix(ip + 8, m, False) else NAT_PASS
        rc = map_one(ip + 8, m, True)
        if rc != NAT_OK:
            return rc
        q = quoted6(ip, n)
        if q and (ip[q] >> 4) == 6 and in_prefix(ip + q + 24, m, False):
            npt_map_addr(ip + q + 24, m, True)
        return NAT_OK

    cdef int in6_locked(self, uint8_t* ip, uint32_t n, int u) noexcept nogil:
        """uplink u -> LAN: a destination in the uplink's prefix takes the LAN's again (and
        an ICMPv6 error's quoted source with it); one to avoid (the router's own) and
        neighbour discovery to a translated address (RFC 4861 messages, 133-137) pass."""
        cdef npt_map* m
        cdef uint32_t q
        cdef int rc
        if u < 0 or u >= self.n_uplinks or self.maps[u].active != 1:
            return NAT_PASS
        m = &self.maps[u]
        if n < 40 or (ip[0] >> 4) != 6:
            return NAT_MALFORMED
        if ip[6] == 58 and n > 40 and ip[40] >= 133 and ip[40] <= 137:
            return NAT_PASS         # neighbour discovery is the link's (the proxy's), never the LAN's
        rc = map_one(ip + 24, m, False)
        if rc != NAT_OK:
            return rc
        q = quoted6(ip, n)
        if q and (ip[q] >> 4) == 6 and in_prefix(ip + q + 8, m, True):
            npt_map_addr(ip + q + 8, m, False)
        return NAT_OK

    def out_packet(self, bytearray pkt, int u):
        return NAMES[self.out6(<uint8_t*>(<char*>pkt), len(pkt), u)]

    def in_packet(self, bytearray pkt, int u):
        return NAMES[self.in6(<uint8_t*>(<char*>pkt), len(pkt), u)]


# ==================================================================== NAPT66

cdef inline int pindex6(uint8_t proto) noexcept nogil:
    if proto == 6:
        return P_TCP
    if proto == 17:
        return P_UDP
    if proto == 58:
        return P_ICMP
    return -1


cdef int walk6(const uint8_t* ip, uint32_t n, uint32_t* l4, uint8_t* proto, uint32_t* frag) noexcept nogil:
    """Past the extension headers (hop-by-hop, mmr's option included; destination options; a
    routing header with no segment left; one fragment header) to the upper layer: NAT_OK with
    its offset, its protocol and the fragment header's offset (0: none); NAT_MALFORMED when
    cut short; NAT_UNSUPPORTED for a routing header still routing or a chain past 8 headers."""
    cdef uint32_t off = 40
    cdef uint8_t nh = ip[6]
    cdef int k
    frag[0] = 0
    for k in range(9):
        if nh == 0 or nh == 60 or nh == 43:
            if off + 8 > n:
                return NAT_MALFORMED
            if nh == 43 and ip[off + 3] != 0:
                return NAT_UNSUPPORTED        # the destination is not the final one
            nh = ip[off]
            off += (<uint32_t>ip[off + 1] + 1) * 8
        elif nh == 44:
            if off + 8 > n or frag[0]:
                return NAT_MALFORMED
            frag[0] = off
            nh = ip[off]
            off += 8
        else:
            if off > n:
                return NAT_MALFORMED
            l4[0] = off
            proto[0] = nh
            return NAT_OK
    return NAT_UNSUPPORTED


cdef inline void set_addr6(uint8_t* p, const uint8_t* a, uint8_t* c1, uint8_t* c3, bint pending3,
                           bint udp3) noexcept nogil:
    """Write the 16-byte address at p and update the checksums over it (pseudo-headers)."""
    cdef int i
    for i in range(8):
        set_word(p + 2 * i, ld16(a + 2 * i), c1, NULL, c3, pending3, udp3)


cdef class Nat66(Nat44):
    """NAPT66 for up to n_uplinks uplinks that offer one IPv6 address each: Nat44's table,
    port choice, timeouts and exhaustion on IPv6 packets (the ICMPv6 checksum covers the
    pseudo-header; fragments follow their first by identification)."""

    def __cinit__(self, int n_uplinks, uint32_t capacity=65536, seed=None, timeouts=None,
                  port_range=(1024, 65535), avoid=None):
        self.a6 = <uint8_t*>calloc(capacity, 32)
        self.addr6 = <uint8_t*>calloc(n_uplinks, 16)
        self.has6 = <uint8_t*>calloc(n_uplinks, 1)
        self.frags6 = <frag6_rec*>calloc(FRAG_SLOTS, sizeof(frag6_rec))
        if self.a6 == NULL or self.addr6 == NULL or self.has6 == NULL or self.frags6 == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.a6)
        free(self.addr6)
        free(self.has6)
        free(self.frags6)

    def set_address(self, int u, address, bint hold=False):
        """The uplink's IPv6 address (16 bytes, an ipaddress object, or None: the uplink does
        not translate; with hold, it translates but has no address yet: IPv6 that would leave
        through it is dropped, no_address).  A change drops the uplink's mappings."""
        cdef uint8_t a[16]
        cdef bytes b
        cdef uint8_t has = 1 if address is not None else (2 if hold else 0)
        if u < 0 or u >= self.n_uplinks:
            raise IndexError("uplink out of range")
        memset(a, 0, 16)
        if has == 1:
            b = bytes(address if isinstance(address, (bytes, bytearray)) else address.packed)
            if len(b) != 16:
                raise ValueError("an IPv6 address has 16 bytes")
            memcpy(a, <const char*>b, 16)
        if has != self.has6[u] or memcmp(a, self.addr6 + 16 * u, 16) != 0:
            self.flush_uplink(u)
            spin_lock(&self.lock)
            memcpy(self.addr6 + 16 * u, a, 16)
            self.has6[u] = has
            spin_unlock(&self.lock)
        return None

    def address(self, int u):
        if u < 0 or u >= self.n_uplinks:
            raise IndexError("uplink out of range")
        return (<char*>self.addr6)[16 * u:16 * u + 16] if self.has6[u] == 1 else None

    def expire(self, double now):
        cdef uint32_t i
        k = Nat44.expire(self, now)
        with nogil:
            spin_lock(&self.lock)
            for i in range(FRAG_SLOTS):
                if self.frags6[i].used and now - self.frags6[i].last > FRAG_TIMEOUT:
                    memset(&self.frags6[i], 0, sizeof(frag6_rec))
            spin_unlock(&self.lock)
        return k

    cdef inline uint32_t fold(self, const uint8_t* a) noexcept nogil:
        """An IPv6 address as a keyed 32-bit value (the fragment slots' key)."""
        return siphash13(a, 2, self.k1, self.k0)

    cdef inline uint32_t key_hash6(self, const uint8_t* int_addr, const uint8_t* rem_addr, uint16_t int_port,
                                   uint16_t rem_port, uint8_t pi, uint8_t u) noexcept nogil:
        """The table's hash of a whole IPv6 key: one SipHash over its 40 bytes."""
        cdef uint8_t k[40]
        memcpy(k, int_addr, 16)
        memcpy(k + 16, rem_addr, 16)
        memcpy(k + 32, &int_port, 2)
        memcpy(k + 34, &rem_port, 2)
        k[36] = pi
        k[37] = u
        k[38] = 0
        k[39] = 0
        return siphash13(k, 5, self.k0, self.k1)

    cdef int32_t find6(self, uint32_t h, const uint8_t* int_addr, const uint8_t* rem_addr, uint16_t int_port,
                       uint16_t rem_port, uint8_t pi, uint8_t u) noexcept nogil:
        """The mapping of the key (h: key_hash6's), -1: none.  Nat44's probe, the addresses
        compared whole beside the table (a6)."""
        cdef uint32_t i = h & self.mask
        cdef int32_t m
        cdef nat_map* e
        while True:
            m = self.slots[i]
            if m < 0:
                return -1
            e = &self.maps[m]
            if (e.hash == h and e.int_port == int_port and e.rem_port == rem_port and e.proto == pi
                    and e.uplink == u and memcmp(self.a6 + 32 * <size_t>m, int_addr, 16) == 0
                    and memcmp(self.a6 + 32 * <size_t>m + 16, rem_addr, 16) == 0):
                return m
            i = (i + 1) & self.mask

    cdef int out6(self, uint8_t* ip, uint32_t n, int u, double now, bint pending, int32_t* hint) noexcept nogil:
        """Translate one IPv6 packet LAN -> uplink u (locked; hint as Nat44.out4's)."""
        cdef int rc
        spin_lock(&self.lock)
        rc = self.out6_locked(ip, n, u, now, pending, hint)
        spin_unlock(&self.lock)
        return rc

    cdef int in6(self, uint8_t* ip, uint32_t n, int u, double now, bint pending) noexcept nogil:
        cdef int rc
        spin_lock(&self.lock)
        rc = self.in6_locked(ip, n, u, now, pending)
        spin_unlock(&self.lock)
        return rc

    cdef int out6_locked(self, uint8_t* ip, uint32_t n, int u, double now, bint pending,
                         int32_t* hint) noexcept nogil:
        cdef uint32_t l4, fh, h
        cdef uint16_t sport, dport
        cdef uint8_t proto, t
        cdef int pi, rc, v
        cdef int32_t m
        cdef uint8_t* ck
        cdef uint8_t* ext
        cdef nat_map* e
        if u < 0 or u >= self.n_uplinks or self.has6[u] == 0:
            return NAT_PASS
        if self.has6[u] == 2:
            return NAT_NO_ADDRESS
        if n < 40 or (ip[0] >> 4) != 6:
            return NAT_MALFORMED
        if 40 + <uint32_t>ld16(ip + 4) < n:
            n = 40 + ld16(ip + 4)
        rc = walk6(ip, n, &l4, &proto, &fh)
        if rc != NAT_OK:
            return rc
        ext = self.addr6 + 16 * u
        if fh and (ld16(ip + fh + 2) & 0xFFF8):   # a later fragment: its address only
            memcpy(ip + 8, ext, 16)
            return NAT_OK
        pi = pindex6(proto)
        if pi < 0:
            return NAT_UNSUPPORTED
        if pi == P_ICMP:
            if l4 + 8 > n:
                return NAT_MALFORMED
            t = ip[l4]
            if t >= 1 and t <= 4:
                return self.error6(ip, n, l4, u, True)
            if t != 128:
                return NAT_UNSUPPORTED
            memcpy(&sport, ip + l4 + 4, 2)     # the identifier stands for the port
            dport = 0
        else:
            if l4 + (20 if pi == P_TCP else 8) > n:
                return NAT_MALFORMED
            memcpy(&sport, ip + l4, 2)
            memcpy(&dport, ip + l4 + 2, 2)
        m = -1
        if hint != NULL and hint[0] >= 0 and <uint32_t>hint[0] < self.capacity:
            e = &self.maps[hint[0]]           # the flow's mapping last time: still this key's?
            if (e.used and e.int_port == sport and e.rem_port == dport and e.proto == pi and e.uplink == u
                    and memcmp(self.a6 + 32 * <size_t>hint[0], ip + 8, 32) == 0):
                m = hint[0]
                self.hinted += 1
        if m < 0:
            h = self.key_hash6(ip + 8, ip + 24, sport, dport, pi, u)
            m = self.find6(h, ip + 8, ip + 24, sport, dport, pi, u)
            if m < 0:
                # the record's 32-bit address fields stay 0: an IPv6 key's addresses are in a6
                m = self.create(h, 0, 0, sport, dport, pi, u, now)
                if m < 0:
                    return NAT_EXHAUSTED
                memcpy(self.a6 + 32 * <size_t>m, ip + 8, 16)
                memcpy(self.a6 + 32 * <size_t>m + 16, ip + 24, 16)
                for v in range(self.n_uplinks):      # failover moved it: its translation changed
                    if v != u and self.find6(self.key_hash6(ip + 8, ip + 24, sport, dport, pi, v), ip + 8,
                                             ip + 24, sport, dport, pi, v) >= 0:
                        self.moved += 1
                        break
            if hint != NULL:
                hint[0] = m
        e = &self.maps[m]
        e.last = now
        if pi == P_TCP:
            self.tcp_state(e, ip[l4 + 13], False)
            xlate(ip + 8, ext, 8, NULL, ip + l4, e.ext_port, ip + l4 + 16, True, pending, False)
        elif pi == P_UDP:
            xlate(ip + 8, ext, 8, NULL, ip + l4, e.ext_port, ip + l4 + 6, True, pending, True)
        else:                                 # ICMPv6: the pseudo-header is in its checksum
            xlate(ip + 8, ext, 8, NULL, ip + l4 + 4, e.ext_port, ip + l4 + 2, True, False, False)
        return NAT_OK

    cdef int in6_locked(self, uint8_t* ip, uint32_t n, int u, double now, bint pending) noexcept nogil:
        cdef uint32_t l4, fh, ident = 0, slot
        cdef uint16_t sport, port, fo
        cdef uint8_t proto, t
        cdef int pi, rc
        cdef int32_t m
        cdef uint8_t* ck
        cdef uint8_t* ia
        cdef nat_map* e
        cdef frag6_rec* fr = NULL
        if u < 0 or u >= self.n_uplinks or self.has6[u] != 1:
            return NAT_PASS
        if n < 40 or (ip[0] >> 4) != 6:
            return NAT_MALFORMED
        if memcmp(ip + 24, self.addr6 + 16 * u, 16) != 0:
            return NAT_PASS
        if 40 + <uint32_t>ld16(ip + 4) < n:
            n = 40 + ld16(ip + 4)
        rc = walk6(ip, n, &l4, &proto, &fh)
        if rc != NAT_OK:
            return NAT_PASS if rc == NAT_UNSUPPORTED else rc
        fo = ld16(ip + fh + 2) if fh else 0
        if fh:
            memcpy(&ident, ip + fh + 4, 4)
            slot = self.frag_slot(self.fold(ip + 8), <uint16_t>(ident ^ (ident >> 16)), proto, u)
            fr = &self.frags6[slot]
        if fo & 0xFFF8:                       # a later fragment: where its first one went
            if (not fr.used or fr.ident != ident or fr.proto != proto or fr.uplink != u
                    or memcmp(fr.rem_addr, ip + 8, 16) != 0):
                return NAT_PASS               # not a translated datagram's: the router's own
            fr.last = now
            memcpy(ip + 24, fr.int_addr, 16)
            return NAT_OK
        pi = pindex6(proto)
        if pi < 0:
            return NAT_PASS                   # ESP, GRE, ... to the router: its own
        if pi == P_ICMP:
            if l4 + 8 > n:
                return NAT_MALFORMED
            t = ip[l4]
            if t >= 1 and t <= 4:
                return self.error6(ip, n, l4, u, False)
            if t != 129:
                return NAT_PASS               # an echo request, neighbour discovery: the router's
            port = ld16(ip + l4 + 4)
            sport = 0
        else:
            if l4 + (20 if pi == P_TCP else 8) > n:
                return NAT_MALFORMED
            port = ld16(ip + l4 + 2)
            memcpy(&sport, ip + l4, 2)
        m = self.rev[(<size_t>u * 3 + pi) * 65536 + port]     # (only the pool's ports have mappings)
        if m < 0 or self.maps[m].rem_port != sport or memcmp(self.a6 + 32 * <size_t>m + 16, ip + 8, 16) != 0:
            if not self.port_ok[port]:
                return NAT_PASS               # outside the mappings' ports: the router's own
            return NAT_PASS if pi == P_ICMP else NAT_UNKNOWN
        e = &self.maps[m]
        e.last = now
        ia = self.a6 + 32 * <size_t>m
        if pi == P_TCP:
            self.tcp_state(e, ip[l4 + 13], True)
            xlate(ip + 24, ia, 8, NULL, ip + l4 + 2, ld16(<uint8_t*>&e.int_port), ip + l4 + 16, True, pending, False)
        elif pi == P_UDP:
            e.state = ST_EST
            xlate(ip + 24, ia, 8, NULL, ip + l4 + 2, ld16(<uint8_t*>&e.int_port), ip + l4 + 6, True, pending, True)
        else:
            xlate(ip + 24, ia, 8, NULL, ip + l4 + 4, ld16(<uint8_t*>&e.int_port), ip + l4 + 2, True, False, False)
        if fh and (fo & 1):                   # a first fragment: the later ones follow it
            memcpy(fr.rem_addr, ip + 8, 16)
            memcpy(fr.int_addr, ia, 16)
            fr.ident = ident
            fr.proto = proto
            fr.uplink = u
            fr.used = 1
            fr.last = now
        return NAT_OK

    cdef int error6(self, uint8_t* ip, uint32_t n, uint32_t l4, int u, bint out) noexcept nogil:
        """An ICMPv6 error (destination unreachable, packet too big, time exceeded, parameter
        problem) about a translated packet.  Out: a LAN host's, about a reply that came in
        (quoted remote -> LAN host): the quote is put back as the remote sent it (-> the
        uplink's address and port).  In: about a packet the NAT sent (quoted uplink address
        and port -> remote): the quote is put back as the LAN host sent it, and the error goes
        to the LAN host.  The ICMPv6 checksum follows every changed word, the pseudo-header's
        too; the quoted upper-layer checksum follows its own pseudo-header and port."""
        cdef uint8_t* q = ip + l4 + 8
        cdef uint32_t qn = n - l4 - 8, ql4, qfh
        cdef uint8_t qproto
        cdef uint8_t* ic = ip + l4 + 2
        cdef uint8_t* qck = NULL
        cdef uint8_t* lan          # the quoted LAN-side address, the port word, the remote's
        cdef uint8_t* pw
        cdef uint8_t* rem
        cdef uint16_t lport, rport, old
        cdef int pi, rc
        cdef int32_t m
        cdef nat_map* e
        if qn < 40 or (q[0] >> 4) != 6:
            return NAT_MALFORMED
        rc = walk6(q, qn, &ql4, &qproto, &qfh)
        if rc != NAT_OK:
            return rc
        if qfh and (ld16(q + qfh + 2) & 0xFFF8):
            return NAT_UNSUPPORTED if out else NAT_PASS
        pi = pindex6(qproto)
        if pi < 0 or ql4 + 8 > qn:
            return (NAT_UNSUPPORTED if out else NAT_PASS) if pi < 0 else NAT_MALFORMED
        if out:
            lan, rem = q + 24, q + 8          # remote -> LAN host
        else:
            lan, rem = q + 8, q + 24          # uplink address -> remote
            if memcmp(lan, self.addr6 + 16 * u, 16) != 0:
                return NAT_PASS
        if pi == P_ICMP:
            if q[ql4] != (129 if out else 128):   # only an echo (reply) can be quoted back
                return NAT_UNSUPPORTED if out else NAT_PASS
            pw = q + ql4 + 4
            rport = 0
            qck = q + ql4 + 2
        else:
            pw = q + ql4 + (2 if out else 0)
            memcpy(&rport, q + ql4 + (0 if out else 2), 2)
            if pi == P_UDP:
                qck = q + ql4 + 6
            elif ql4 + 18 <= qn:
                qck = q + ql4 + 16
        if out:
            memcpy(&lport, pw, 2)
            m = self.find6(self.key_hash6(lan, rem, lport, rport, pi, u), lan, rem, lport, rport, pi, u)
            if m < 0:
                return NAT_UNKNOWN
        else:
            if not self.port_ok[ld16(pw)]:
                return NAT_PASS
            m = self.rev[(<size_t>u * 3 + pi) * 65536 + ld16(pw)]
            if m < 0 or self.maps[m].rem_port != rport or memcmp(self.a6 + 32 * <size_t>m + 16, rem, 16) != 0:
                return NAT_PASS if pi == P_ICMP else NAT_UNKNOWN
        e = &self.maps[m]
        old = ld16(qck) if qck != NULL else 0
        if out:
            set_addr6(lan, self.addr6 + 16 * u, ic, qck, False, pi == P_UDP)
            set_word(pw, e.ext_port, ic, NULL, qck, False, pi == P_UDP)
        else:
            set_addr6(lan, self.a6 + 32 * <size_t>m, ic, qck, False, pi == P_UDP)
            set_word(pw, ld16(<uint8_t*>&e.int_port), ic, NULL, qck, False, pi == P_UDP)
        if qck != NULL:
            fix(ic, old, ld16(qck), False, False)
        if out:                               # the error itself: from the uplink's address
            set_addr6(ip + 8, self.addr6 + 16 * u, ic, NULL, False, False)
        else:                                 # to the LAN host
            set_addr6(ip + 24, self.a6 + 32 * <size_t>m, ic, NULL, False, False)
        return NAT_OK

    # ---------------------------------------------------------------- Python entry points
    def out_packet(self, bytearray pkt, int u, double now, bint pending=False):
        """Translate one IPv6 packet (LAN -> uplink u) in place; returns the NAT_* name."""
        return NAMES[self.out6(<uint8_t*>(<char*>pkt), len(pkt), u, now, pending, NULL)]

    def in_packet(self, bytearray pkt, int u, double now, bint pending=False):
        """Translate one IPv6 packet (uplink u -> LAN) in place; returns the NAT_* name."""
        return NAMES[self.in6(<uint8_t*>(<char*>pkt), len(pkt), u, now, pending)]

    cdef int one(self, uint8_t* ip, uint32_t n, int u, double now, bint out) noexcept nogil:
        return self.out6(ip, n, u, now, False, NULL) if out else self.in6(ip, n, u, now, False)

    def mapping(self, int proto, int_addr, int int_port, rem_addr, int rem_port, int u):
        """The external port of a mapping (addresses as 16 bytes, ports as numbers), or None."""
        cdef int pi = pindex6(proto)
        cdef uint16_t ip_, rp
        cdef int32_t m
        cdef bytes ia = bytes(int_addr), ra = bytes(rem_addr)
        if pi < 0 or u < 0 or u >= self.n_uplinks:
            return None
        if len(ia) != 16 or len(ra) != 16:
            raise ValueError("IPv6 addresses have 16 bytes")
        ip_ = ((int_port & 0xFF) << 8) | (int_port >> 8)        # packet order
        rp = ((rem_port & 0xFF) << 8) | (rem_port >> 8)
        spin_lock(&self.lock)
        m = self.find6(self.key_hash6(<const uint8_t*><const char*>ia, <const uint8_t*><const char*>ra, ip_, rp, pi, u),
                       <const uint8_t*><const char*>ia, <const uint8_t*><const char*>ra, ip_, rp, pi, u)
        port = -1 if m < 0 else self.maps[m].ext_port
        spin_unlock(&self.lock)
        return None if port < 0 else port
