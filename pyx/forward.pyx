# cython: language_level=3
"""forward: the forwarding decisions of the live engine, per batch, and the steps that run
them between a source and its sinks.

Two directions, one engine for ``mmr run`` (router) and ``mmr host`` (virtual interface):

  outbound   inside -> uplinks    router: LAN ring        host: TUN (the VI)
      parse, verdict                         (engine._pipeline: parse_c)
      not ours? -> KERNEL                    router: for the router itself (its addresses,
                                             multicast, link-local, another MAC, a link-local
                                             source), or outside the handover window
      route                                  (engine._pipeline: route_c: classify, flowbase,
                                             select)
      host: from an interface's own address?  out of that interface, untranslated
      next hop known?  else DROP no_neighbour        (the uplink's gateway MAC for the
                                             packet's family: gw_mac[u, 0] IPv4, [u, 1] IPv6)
      fits the uplink's MTU?  else DROP oversize, punt packet too big
      (an unknown hop-by-hop option, RFC 8200 4.2: DROP opt_unknown_discard / _icmp at parse;
       router: _icmp punts a parameter problem, see param_problem())
      rewrite  MACs, hop limit - 1 (router), VLAN tags off, unfinished checksums finished
               (engine._rewrite)           hop limit ran out -> DROP hop_limit, punt
                                           time exceeded
      -> per-uplink index lists -> one sendmmsg per uplink

  inbound    uplink u -> inside
      parse, verdict
      translated back?  a reply to a mapping of uplink u's address (NAPT44; router: NPTv6
               too) gets the LAN host's (host: the VI's) address and port again; to a
               mapping's port without a mapping: DROP nat_unsolicited
      ours?    router: to uplink u's MAC, to a LAN prefix, not to the router itself;
               host: to an address of the VI.  Else KERNEL (probe replies, ND, ...)
      router: the LAN host's MAC known?  else DROP no_neighbour, punt a resolution
      fits the inside MTU?  else DROP oversize, punt packet too big
      rewrite  router: MACs, hop limit - 1; host: checksums finished (super-frames too:
               the VI takes them as one packet)
      -> LAN sendmmsg / TUN writes

Takes   a Pipeline and tables that Python keeps current from netlink events: MACs, MTUs,
        gateway MACs, the LAN hosts' MACs (``hosts``: address -> row of ``host_mac``), the
        addresses that are the machine's own (``local``), the LAN prefixes, and the
        handover window [t_start, t_end) outside which the kernel forwards, not mmr.
Emits   ``outbound()`` / ``inbound()``: (out, verdict) per frame, frames rewritten in place;
        callable offline with any buffer (tests).  ``step_inside()`` / ``step_uplink(u)``:
        the same over the live sources, and the sends.
Drops   every dropped frame has one reason in the counter table (engine/counters.py).
        ICMP errors and neighbour resolutions are punted to Python (``punts``), at most
        1000 ICMP errors a second (burst 50, as the kernel's icmp_msgs_per_sec) and 100
        resolutions a second: a flood cannot make the engine spend its time in Python.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int8_t, int16_t, int32_t, int64_t
from libc.string cimport memcpy, memset, memcmp
from cpython.mem cimport PyMem_Malloc, PyMem_Free

cimport rows
from rows cimport mmr_row
from siphash cimport siphash13, ld64
from virtio_net cimport virtio_net_hdr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE
from netinet_in cimport IPPROTO_TCP, IPPROTO_ICMPV6
from sys_net cimport pollfd, ppoll, timespec, POLLERR, POLLHUP, POLLNVAL
from engine._pipeline cimport Pipeline, OUT_ROUTE, OUT_KERNEL, OUT_DROP
from engine._rewrite cimport (rewrite_one, finish_checksum, RW_MACS, RW_HOP, RW_CSUM_GSO, RW_STRIP,
                              VERDICT_OK, VERDICT_HOP_LIMIT, VERDICT_BAD_OFFLOAD)
from engine._ring cimport RxRing, TxSocket
from engine._tun cimport Tun
from engine._nat cimport Nat44, Npt66, Nat66, NAT_OK, NAT_PASS, NAT_UNKNOWN, NAT_EXHAUSTED, NAT_NO_ADDRESS, spin_lock, spin_unlock
from engine._edge cimport Edge, EDGE_OK, EDGE_FULL

import os
import time

import numpy as np

from engine import constants as C
from engine import counters as CT
from engine.constants import ROW_DTYPE, VNET_DTYPE

PUNT_DTYPE = np.dtype([
    ("kind", "u1"), ("side", "u1"), ("uplink", "u1"), ("family", "u1"), ("l3_off", "<u2"),
    ("caplen", "<u2"), ("mtu", "<u4"), ("length", "<u4"), ("addr", "u1", (16,)),
    ("data", "u1", (1280,)),
])
PUNT_KINDS = {PUNT_TIME_EXCEEDED: "time_exceeded", PUNT_TOO_BIG: "too_big", PUNT_NEIGHBOUR: "neighbour",
              PUNT_PARAM_PROBLEM: "param_problem"}
KIND_TIME_EXCEEDED, KIND_TOO_BIG, KIND_NEIGHBOUR = PUNT_TIME_EXCEEDED, PUNT_TOO_BIG, PUNT_NEIGHBOUR
KIND_PARAM_PROBLEM = PUNT_PARAM_PROBLEM
cdef enum:
    MAX_PUNTS = 64

cdef extern from *:
    """
    #include <sched.h>
    #include <time.h>
    static inline double mmr_mono(void) {
        struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9;
    }
    static inline double mmr_wall(void) {
        struct timespec t; clock_gettime(CLOCK_REALTIME, &t); return t.tv_sec + t.tv_nsec * 1e-9;
    }
    """
    double mono "mmr_mono"() nogil
    double wall "mmr_wall"() nogil
    int sched_yield() nogil


cdef inline uint32_t addr_hash(const uint8_t* k, uint64_t k0, uint64_t k1) noexcept nogil:
    """A 16-byte address's hash under the per-process key (LAN hosts choose their addresses:
    no crafted set may pile up in one probe chain)."""
    return siphash13(k, 2, k0, k1)


cdef class AddrTable:
    """16-byte address -> int32, open addressing with linear probing and backward-shift
    deletion; fixed capacity (at most half full).  Addresses are in the row form
    (IPv4-mapped for IPv4).  Lookups are C; changes come from Python (netlink events)."""

    def __cinit__(self, capacity=4096, seed=None):
        self.keys = NULL
        self.vals = NULL

    def __init__(self, capacity=4096, seed=None):
        cdef uint32_t n = 16
        while n < 2 * int(capacity):
            n *= 2
        self.capacity = int(capacity)
        self.mask = n - 1
        self.keys = <uint8_t*>PyMem_Malloc(n * 16)
        self.vals = <int32_t*>PyMem_Malloc(n * sizeof(int32_t))
        if self.keys == NULL or self.vals == NULL:
            raise MemoryError()
        seed = os.urandom(16) if seed is None else bytes(seed)
        if len(seed) != 16:
            raise ValueError("seed must be 16 bytes")
        self.k0 = int.from_bytes(seed[:8], "little")
        self.k1 = int.from_bytes(seed[8:], "little")
        self.clear()

    def __dealloc__(self):
        PyMem_Free(self.keys)
        PyMem_Free(self.vals)

    def clear(self):
        cdef uint32_t i
        for i in range(self.mask + 1):
            self.vals[i] = -1
        self.size = 0

    def __len__(self):
        return self.size

    cdef int32_t get_c(self, const uint8_t* key) noexcept nogil:
        cdef uint32_t i = addr_hash(key, self.k0, self.k1) & self.mask
        while self.vals[i] >= 0:
            if memcmp(self.keys + 16 * i, key, 16) == 0:
                return self.vals[i]
            i = (i + 1) & self.mask
        return -1

    @staticmethod
    def _key(key):
        key = bytes(key)
        if len(key) == 4:
            key = bytes(10) + b"\xff\xff" + key
        if len(key) != 16:
            raise ValueError("an address is 16 bytes (or 4 for IPv4)")
        return key

    def get(self, key):
        cdef bytes k = AddrTable._key(key)
        return self.get_c(<const uint8_t*>k)

    def key_hash(self, key):
        """The 32-bit keyed hash of an address (for tests of the hash)."""
        cdef bytes k = AddrTable._key(key)
        return addr_hash(<const uint8_t*>k, self.k0, self.k1)

    def __contains__(self, key):
        return self.get(key) >= 0

    def set(self, key, int value):
        """Insert or replace; False when the table is full (the caller counts it)."""
        if value < 0:
            raise ValueError("values are >= 0")
        cdef bytes k = AddrTable._key(key)
        cdef const uint8_t* kp = k
        cdef uint32_t i = addr_hash(kp, self.k0, self.k1) & self.mask
        while self.vals[i] >= 0:
            if memcmp(self.keys + 16 * i, kp, 16) == 0:
                self.vals[i] = value
                return True
            i = (i + 1) & self.mask
        if self.size >= self.capacity:
            return False
        memcpy(self.keys + 16 * i, kp, 16)
        self.vals[i] = value
        self.size += 1
        return True

    def remove(self, key):
        """Remove key if present (backward-shift deletion); returns its value or -1."""
        cdef bytes k = AddrTable._key(key)
        cdef const uint8_t* kp = k
        cdef uint32_t i = addr_hash(kp, self.k0, self.k1) & self.mask
        cdef uint32_t j, home
        cdef int32_t old
        while self.vals[i] >= 0:
            if memcmp(self.keys + 16 * i, kp, 16) == 0:
                break
            i = (i + 1) & self.mask
        else:
            return -1
        old = self.vals[i]
        j = i
        while True:
            j = (j + 1) & self.mask
            if self.vals[j] < 0:
                break
            home = addr_hash(self.keys + 16 * j, self.k0, self.k1) & self.mask
            # move j back to i when its home is not in (i, j] (cyclically)
            if ((j - home) & self.mask) >= ((j - i) & self.mask):
                memcpy(self.keys + 16 * i, self.keys + 16 * j, 16)
                self.vals[i] = self.vals[j]
                i = j
        self.vals[i] = -1
        self.size -= 1
        return old

    def items(self):
        cdef uint32_t i
        return [(bytes(self.keys[16 * i:16 * i + 16]), self.vals[i])
                for i in range(self.mask + 1) if self.vals[i] >= 0]


cdef inline bint not_routable(const mmr_row* r) noexcept nogil:
    """Destinations a router leaves to its own stack: multicast, IPv6 link-local, IPv4
    multicast and broadcast (224/3); sources it must not forward: IPv6 link-local and
    unspecified."""
    if r.family == 6:
        if r.dst[0] == 0xFF or (r.dst[0] == 0xFE and (r.dst[1] & 0xC0) == 0x80):
            return True
        if r.src[0] == 0xFE and (r.src[1] & 0xC0) == 0x80:
            return True
        return ld64(r.src) == 0 and ld64(r.src + 8) == 0          # ::
    return r.dst[12] >= 224


cdef inline bint param_problem_allowed(const uint8_t* f, const mmr_row* r,
                                      const uint8_t* mac) noexcept nogil:
    """May a parameter problem answer this opt_unknown_icmp frame (RFC 4443 2.4(e))?  It came
    to this machine at the link layer (to mac, or to the IPv6 multicast MAC 33:33:.. when the
    destination is multicast: allowed for an unknown-option problem, e.3/e.4; never a
    broadcast), its source names one node (not ::, not multicast; e.6), and it is no ICMPv6
    error or redirect (e.1, e.2)."""
    if r.family != 6:
        return False
    if r.dst[0] == 0xFF:
        if f[0] != 0x33 or f[1] != 0x33:
            return False
    elif memcmp(f, mac, 6) != 0:
        return False
    if r.src[0] == 0xFF or (ld64(r.src) == 0 and ld64(r.src + 8) == 0):
        return False
    if r.proto == IPPROTO_ICMPV6 and (r.flags & rows.F_L4) and (r.icmp_type < 128 or r.icmp_type == 137):
        return False
    return True


cdef inline bint private4(const uint8_t* a) noexcept nogil:
    """RFC 1918 and RFC 6598 (shared, carrier-grade NAT) IPv4 space."""
    return (a[0] == 10 or (a[0] == 172 and (a[1] & 0xF0) == 16) or (a[0] == 192 and a[1] == 168)
            or (a[0] == 100 and (a[1] & 0xC0) == 64))


cdef inline int nat_reason(int code) noexcept nogil:
    if code == NAT_UNKNOWN:
        return rows.R_NAT_UNSOLICITED
    if code == NAT_EXHAUSTED:
        return rows.R_NAT_EXHAUSTED
    if code == NAT_NO_ADDRESS:
        return rows.R_NAT_NO_ADDRESS
    return rows.R_NAT_UNTRANSLATABLE


cdef inline bint in_nets(const uint8_t* a, const uint8_t* nets, Py_ssize_t n) noexcept nogil:
    """a (16 bytes) inside one of n (value[16], mask[16]) prefixes."""
    cdef Py_ssize_t k
    cdef const uint8_t* net
    for k in range(n):
        net = nets + 32 * k
        if ((ld64(a) & ld64(net + 16)) == ld64(net) and (ld64(a + 8) & ld64(net + 24)) == ld64(net + 8)):
            return True
    return False


cdef class Forwarder:
    """The decisions of one engine (``router``: mmr run; else mmr host) over ``n_uplinks``
    uplinks, for batches of up to ``batch`` frames."""

    def __init__(self, Pipeline pipe, bint router, int n_uplinks, Py_ssize_t batch=256,
                 int hosts=4096, int lan_prefixes=64):
        self.pipe = pipe
        self.router = router
        # RFC 8200 4.2 as a router; in host mode the VI's own packets go out as they are and
        # the kernel behind the VI, their destination, acts on the options of those coming in
        pipe.honour_unknown = router
        # the kernel of a Linux router answers them too (it reads the hop-by-hop header before
        # the guard's prerouting hook, 1/s per source): False leaves the answer to it alone
        self.param_problems = True
        self.n_up = n_uplinks
        self.cap = max(1, batch)
        if self.pipe.cap < self.cap:
            self.pipe.alloc(self.cap)
        self.counters = CT.new_table()
        pipe.count_into(self.counters)
        self.up_mac = np.zeros((max(n_uplinks, 1), 6), np.uint8)
        # per uplink and family (0: IPv4, 1: IPv6): the DHCP gateway and the RA router may be
        # different hosts; gw_mac[u] = mac sets both
        self.gw_mac = np.zeros((max(n_uplinks, 1), 2, 6), np.uint8)
        self.up_mtu = np.full(max(n_uplinks, 1), 1500, np.int32)
        self.in_mac = np.zeros((1, 6), np.uint8)
        self.host_mac = np.zeros((hosts, 6), np.uint8)
        self.lan_net = np.zeros((lan_prefixes, 2, 16), np.uint8)      # value, mask
        self.kernel_net = np.zeros((256, 2, 16), np.uint8)
        self.n_hosts = hosts
        self.n_lan = 0
        self.in_mtu = 1500
        self.local = AddrTable(1024)
        self.hosts = AddrTable(hosts)
        self.own = AddrTable(256)
        self.t_start = 0.0
        self.t_end = float("inf")
        self.last_active = 0.0
        self.tun_ready = True
        self.verdict = np.zeros(self.cap, np.uint8)
        self.port_idx = np.zeros((max(n_uplinks, 1) + 1, self.cap), np.int32)
        self.port_n = np.zeros(max(n_uplinks, 1) + 1, np.int32)
        self.punts = np.zeros(MAX_PUNTS, PUNT_DTYPE)
        self.zero_vnet = np.zeros(self.cap, VNET_DTYPE)
        self.now_ts = np.zeros(self.cap, np.float64)
        self.l3buf = np.zeros(self.cap, np.uint16)
        self.punt_n = 0
        self.icmp_bucket = bucket(rate=1000.0, burst=50.0, tokens=50.0, last=0.0)
        self.neigh_bucket = bucket(rate=100.0, burst=20.0, tokens=20.0, last=0.0)
        cdef uint64_t[::1] c = self.counters
        cdef uint8_t[:, ::1] a = self.up_mac
        cdef uint8_t[:, :, ::1] g = self.gw_mac
        cdef int32_t[::1] m = self.up_mtu
        cdef uint8_t[:, ::1] im = self.in_mac
        cdef uint8_t[:, ::1] hm = self.host_mac
        cdef uint8_t[:, :, ::1] ln = self.lan_net
        cdef uint8_t[:, :, ::1] kn = self.kernel_net
        self.kernel_net_c = &kn[0, 0, 0]
        self.n_kernel = 0
        cdef uint8_t[::1] v = self.verdict
        cdef int32_t[:, ::1] pi = self.port_idx
        cdef int32_t[::1] pn = self.port_n
        cdef uint8_t[::1] pb = self.punts.view(np.uint8)
        cdef uint16_t[::1] l3b = self.l3buf
        self.l3c = &l3b[0]
        self.nat_in = np.full(self.cap, -1, np.int8)
        cdef int8_t[::1] ni = self.nat_in
        self.nat_in_c = &ni[0]
        cdef double[::1] nt = self.now_ts
        cdef uint8_t[::1] zvb = self.zero_vnet.view(np.uint8)
        self.now_c, self.zero_vh = &nt[0], <virtio_net_hdr*>&zvb[0]
        self.cnt, self.up_mac_c, self.gw_mac_c, self.up_mtu_c = &c[0], &a[0, 0], &g[0, 0, 0], &m[0]
        self.in_mac_c, self.host_mac_c, self.lan_net_c = &im[0, 0], &hm[0, 0], &ln[0, 0, 0]
        self.verd, self.pidx, self.pn, self.pc = &v[0], &pi[0, 0], &pn[0], <punt_rec*>&pb[0]
        self.up_rx = [None] * n_uplinks
        self.up_tx = [None] * n_uplinks
        self.up_strip = np.zeros(max(n_uplinks, 1), np.int32)
        cdef int32_t[::1] st = self.up_strip
        self.up_strip_c = &st[0]
        self.set_strip(pipe.cfg)
        self.nat = None
        self.npt = None
        self.nat6 = None
        self.nat_mode = np.zeros(max(n_uplinks, 1), np.uint8)
        cdef uint8_t[::1] nm = self.nat_mode
        self.nat_mode_c = &nm[0]
        self.edge = None
        self.edge_mode = np.zeros(max(n_uplinks, 1), np.uint8)
        cdef uint8_t[::1] em = self.edge_mode
        self.edge_mode_c = &em[0]
        self.open_net = np.zeros((256, 2, 16), np.uint8)
        cdef uint8_t[:, :, ::1] on = self.open_net
        self.open_net_c = &on[0, 0, 0]
        self.n_open = 0
        self.fwd_addr = np.zeros((64, 16), np.uint8)
        self.fwd_meta = np.zeros((64, 3), np.int32)
        self.fwd_up = np.zeros((64, max(n_uplinks, 1)), np.uint8)
        cdef uint8_t[:, ::1] fa = self.fwd_addr
        cdef int32_t[:, ::1] fm = self.fwd_meta
        cdef uint8_t[:, ::1] fu = self.fwd_up
        self.fwd_addr_c, self.fwd_meta_c, self.fwd_up_c = &fa[0, 0], &fm[0, 0], &fu[0, 0]
        self.n_fwd = 0

    def set_strip(self, cfg):
        """[[uplink]] strip_option: the option type each uplink removes (0: none)."""
        for u, up in enumerate(cfg.uplinks[:self.n_up]):
            self.up_strip[u] = cfg.option_type if getattr(up, "strip_option", False) else 0

    def set_nat(self, Nat44 nat, modes, Npt66 npt, Nat66 nat6=None):
        """Source translation: nat (NAPT44) for the uplinks whose mode is 1 (IPv4 sources in
        private ranges) or 2 (every IPv4 source); npt (NPTv6) for those it has prefixes for;
        nat6 (NAPT66) for those it has an address (or a hold) for.  None: no translation."""
        if len(modes) != self.n_up:
            raise ValueError(f"give a mode for each of the {self.n_up} uplinks")
        if (nat is not None and nat.n_uplinks < self.n_up or npt is not None and npt.n_uplinks < self.n_up
                or nat6 is not None and nat6.n_uplinks < self.n_up):
            raise ValueError("the translators must cover every uplink")
        for u, m in enumerate(modes):
            if m not in (0, 1, 2):
                raise ValueError("a NAT mode is 0, 1 or 2")
            self.nat_mode[u] = m
        self.nat = nat
        self.npt = npt
        self.nat6 = nat6
        cdef int32_t[::1] hv
        if (nat is not None or nat6 is not None) and self.n_hint == 0:
            # a translated flow remembers its mapping: its later packets skip the hash and probe
            self.nat_hint = np.full(self.pipe.flows.capacity, -1, np.int32)
            hv = self.nat_hint
            self.nat_hint_c, self.n_hint = &hv[0], self.pipe.flows.capacity

    def set_edge(self, Edge edge, modes):
        """The stateful edge: edge (None: none) for the uplinks whose mode is 1; 0 lets an
        uplink's inbound through unchecked (a routed setup).  Router only: in host mode the
        VI's own stack is the endpoint."""
        if len(modes) != self.n_up:
            raise ValueError(f"give an edge mode for each of the {self.n_up} uplinks")
        for u, m in enumerate(modes):
            if m not in (0, 1):
                raise ValueError("an edge mode is 0 or 1")
            self.edge_mode[u] = m
        self.edge = edge
        cdef int32_t[::1] hv
        if edge is not None and self.n_edge_hint == 0:
            # a flow remembers its edge record: its later packets out skip the hash and probe
            self.edge_hint = np.full(self.pipe.flows.capacity, -1, np.int32)
            hv = self.edge_hint
            self.edge_hint_c, self.n_edge_hint = &hv[0], self.pipe.flows.capacity

    def set_routed_prefixes(self, nets):
        """LAN destinations open to unsolicited inbound (the operator's routed prefixes):
        (value, mask) over the 16 row bytes.  At most 256."""
        self.n_open = Forwarder._fill(self.open_net, nets)

    def set_forwards(self, forwards):
        """[[forward]] port forwards the edge opens: (LAN address in the row form, protocol,
        first port, last port, the uplinks' indexes).  At most 64."""
        forwards = list(forwards)
        if len(forwards) > 64:
            raise ValueError("at most 64 forwards")
        self.fwd_up[:] = 0
        for k, (addr, proto, lo, hi, ups) in enumerate(forwards):
            self.fwd_addr[k] = np.frombuffer(bytes(addr), np.uint8)
            self.fwd_meta[k] = (proto, lo, hi)
            for u in ups:
                self.fwd_up[k, u] = 1
        self.n_fwd = len(forwards)

    cdef inline bint forwarded(self, const mmr_row* r, int u) noexcept nogil:
        """A new connection a [[forward]] opens: its protocol, LAN address and port, on uplink u."""
        cdef Py_ssize_t k
        cdef const int32_t* m
        if not (r.flags & rows.F_L4):
            return False
        for k in range(self.n_fwd):
            m = self.fwd_meta_c + 3 * k
            if (m[0] == r.proto and m[1] <= r.dport and r.dport <= m[2] and self.fwd_up_c[k * self.n_up + u]
                    and memcmp(self.fwd_addr_c + 16 * k, r.dst, 16) == 0):
                return True
        return False

    # ------------------------------------------------------------------ tables
    @staticmethod
    def _fill(table, nets):
        nets = list(nets)
        if len(nets) > table.shape[0]:
            raise ValueError(f"at most {table.shape[0]} prefixes")
        table[:] = 0
        for k, (value, mask) in enumerate(nets):
            table[k, 0] = np.frombuffer(bytes(value), np.uint8)
            table[k, 1] = np.frombuffer(bytes(mask), np.uint8)
        return len(nets)

    def set_lan_prefixes(self, nets):
        """The LAN prefixes, whose packets from the uplinks mmr delivers: (value, mask) over
        the 16 row bytes (IPv4 as IPv4-mapped)."""
        self.n_lan = Forwarder._fill(self.lan_net, nets)

    def set_kernel_prefixes(self, nets):
        """Destinations the machine's kernel routes itself (its other networks, the LAN's own
        prefixes): a LAN frame to one of them is left to the kernel.  At most 256."""
        self.n_kernel = Forwarder._fill(self.kernel_net, nets)

    def attach(self, in_ring=False, in_tx=False, tun=False, up_rx=None, up_tx=None):
        """The live sources and sinks: the LAN ring and socket (router) or the TUN (host),
        and per uplink its ring and socket.  Only what is given changes (None detaches)."""
        for src in (in_ring, tun, *(up_rx or [])):
            if src not in (None, False) and src.capacity > self.cap:
                raise ValueError(f"a source's batches ({src.capacity}) exceed the forwarder's ({self.cap})")
        if up_rx is not None and len(up_rx) != self.n_up or up_tx is not None and len(up_tx) != self.n_up:
            raise ValueError(f"give {self.n_up} uplink rings and sockets")
        if in_ring is not False:
            self.in_ring = in_ring
        if in_tx is not False:
            self.in_tx = in_tx
        if tun is not False:
            self.tun = tun
        if up_rx is not None:
            self.up_rx = list(up_rx)
        if up_tx is not None:
            self.up_tx = list(up_tx)

    def detach_uplink(self, int u):
        """Uplink u's device is gone: no more reads from it or sends to it."""
        if not 0 <= u < self.n_up:
            raise ValueError("no such uplink")
        self.up_rx[u] = None
        self.up_tx[u] = None

    # ------------------------------------------------------------------ helpers
    cdef void punt(self, int kind, int side, int uplink, const uint8_t* frame, uint32_t length,
                   const mmr_row* r, uint32_t mtu) noexcept nogil:
        cdef punt_rec* p
        cdef uint32_t k
        if self.punt_n >= MAX_PUNTS:
            if kind != PUNT_NEIGHBOUR:
                self.cnt[CNT_ICMP_LIMITED] += 1
            return
        p = &self.pc[self.punt_n]
        self.punt_n += 1
        p.kind = <uint8_t>kind
        p.side = <uint8_t>side
        p.uplink = <uint8_t>uplink
        p.family = r.family
        p.l3_off = r.l3_off
        p.mtu = mtu
        p.length = length
        memcpy(p.addr, r.dst, 16)
        k = length if length < 1280 else 1280
        p.caplen = <uint16_t>k
        memcpy(p.data, frame, k)

    cdef void param_problem(self, int side, int uplink, const uint8_t* frame, uint32_t length,
                            const mmr_row* r, const uint8_t* mac, double now) noexcept nogil:
        """A router's answer to a frame dropped opt_unknown_icmp (RFC 8200 4.2): an ICMPv6
        parameter problem, code 2, pointer = r.opt_off, punted like the other ICMP errors
        (same token bucket, icmp_limited when over it), when param_problem_allowed().  The
        caller checked the handover window and the VLAN device."""
        if not self.param_problems or not param_problem_allowed(frame, r, mac):
            return
        if take_token(&self.icmp_bucket, now):
            self.punt(PUNT_PARAM_PROBLEM, side, uplink, frame, length, r, r.opt_off)
        else:
            self.cnt[CNT_ICMP_LIMITED] += 1

    cdef uint32_t seg_len(self, const uint8_t* frame, const mmr_row* r,
                          const virtio_net_hdr* vh, uint32_t length) noexcept nogil:
        """The largest IP packet this frame puts on the wire: the frame's IP packet, or for
        a super-frame one segment (its headers + gso_size)."""
        cdef uint32_t l4end
        if vh.gso_type == VIRTIO_NET_HDR_GSO_NONE or r.l4_off == 0:
            return length - r.l3_off
        if r.proto == IPPROTO_TCP and r.l4_off + 13 <= length:
            l4end = r.l4_off + ((frame[r.l4_off + 12] >> 4) * 4)
        else:
            l4end = r.l4_off + 8
        return l4end - r.l3_off + vh.gso_size

    # ------------------------------------------------------------------ decisions
    cdef void outbound_c(self, uint8_t* base, int64_t* off, uint32_t* lens, virtio_net_hdr* vh,
                         const double* ts, const uint8_t* vlan, Py_ssize_t n) noexcept nogil:
        """inside -> uplinks: self.pipe.outp[i] ends as an uplink (frame rewritten and listed in
        port_idx[u]), KERNEL or DROP."""
        cdef Py_ssize_t i
        cdef int u, v, k, how, c
        cdef mmr_row* r
        cdef const uint8_t* f
        cdef const uint8_t* gw
        cdef uint32_t mtu
        cdef bint own
        cdef uint8_t tcp_flags
        cdef bint napt
        cdef int16_t* out = self.pipe.outp
        cdef double now = ts[n - 1] if n else 0.0
        self.pipe.parse_c(base, off, lens, n)
        for i in range(n):                      # pre-route: what is not for mmr to forward
            if out[i] != OUT_ROUTE:
                if (out[i] == OUT_DROP and self.router and self.pipe.rp[i].reason == rows.R_OPT_UNKNOWN_ICMP
                        and ts[i] >= self.t_start and ts[i] < self.t_end and (vlan == NULL or not vlan[i])):
                    self.param_problem(0, 0, base + off[i], lens[i], &self.pipe.rp[i], self.in_mac_c, now)
                continue
            if not self.router:
                continue                        # the VI's packets: nobody else would send them
            if ts[i] < self.t_start or ts[i] >= self.t_end:
                out[i] = OUT_KERNEL
                self.cnt[CNT_HANDOVER] += 1
                continue
            r = &self.pipe.rp[i]
            f = base + off[i]
            if (vlan != NULL and vlan[i]) or memcmp(f, self.in_mac_c, 6) != 0 or not_routable(r) \
                    or self.local.get_c(r.dst) >= 0 or in_nets(r.dst, self.kernel_net_c, self.n_kernel):
                out[i] = OUT_KERNEL
        self.pipe.route_c(ts, n)
        for k in range(self.n_up):
            self.pn[k] = 0
        how = RW_MACS | (RW_HOP if self.router else 0)
        for i in range(n):
            u = out[i]
            if u < 0:
                if u == OUT_KERNEL:
                    self.cnt[CNT_KERNEL] += 1
                continue
            r = &self.pipe.rp[i]
            f = base + off[i]
            own = False
            if not self.router:
                k = self.own.get_c(r.src)
                if k >= 0 and k < self.n_up:
                    # the host's own packet that its kernel routed via the VI (a reset, an
                    # unreachable, a server's answer on an interface's address): out of the
                    # interface whose address it has, as it is
                    u = k
                    out[i] = <int16_t>k
                    own = True
            gw = self.gw_mac_c + 12 * u + (6 if r.family == 6 else 0)
            if (gw[0] | gw[1] | gw[2] | gw[3] | gw[4] | gw[5]) == 0:
                self.drop(i, rows.R_NO_NEIGHBOUR)   # no next hop for this family on u
                continue
            mtu = <uint32_t>self.up_mtu_c[u]
            if self.seg_len(f, r, &vh[i], lens[i]) > mtu:
                self.drop(i, rows.R_OVERSIZE)
                if self.router:
                    if take_token(&self.icmp_bucket, now):
                        self.punt(PUNT_TOO_BIG, 0, 0, f, lens[i], r, mtu)
                    else:
                        self.cnt[CNT_ICMP_LIMITED] += 1
                continue
            if vh[i].flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
                if vh[i].gso_type == VIRTIO_NET_HDR_GSO_NONE:
                    self.cnt[CNT_CSUM_FINISHED] += 1
                else:
                    self.cnt[CNT_SUPER_FRAMES] += 1
            # the TCP flags for the edge, read before rewrite moves the headers (VLAN, option)
            tcp_flags = 0
            if r.proto == IPPROTO_TCP and (r.flags & rows.F_L4) and <uint32_t>r.l4_off + 14 <= lens[i]:
                tcp_flags = f[r.l4_off + 13]
            v = rewrite_one(base, &off[i], &lens[i], r, &vh[i], self.up_mac_c + 6 * u, gw,
                            how | ((RW_STRIP | (self.up_strip_c[u] << 8)) if self.up_strip_c[u] else 0))
            if v == VERDICT_HOP_LIMIT:
                self.drop(i, rows.R_HOP_LIMIT)
                if take_token(&self.icmp_bucket, now):
                    self.punt(PUNT_TIME_EXCEEDED, 0, 0, f, lens[i], r, 0)
                else:
                    self.cnt[CNT_ICMP_LIMITED] += 1
                continue
            if v == VERDICT_BAD_OFFLOAD:
                self.drop(i, rows.R_BAD_OFFLOAD)
                continue
            # source translation, on the frame as it leaves (untagged Ethernet: IP at 14)
            napt = False
            if own:
                pass
            elif r.family == 4 and self.nat_mode_c[u] and self.nat is not None and \
                    (self.nat_mode_c[u] == 2 or private4(r.src + 12)):
                c = self.nat.out4(base + off[i] + 14, lens[i] - 14, u, ts[i],
                                  (vh[i].flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) != 0, self.hint(i))
                if c != NAT_OK and c != NAT_PASS:
                    self.drop(i, nat_reason(c))
                    continue
                napt = c == NAT_OK
            elif r.family == 6 and (self.npt is not None or self.nat6 is not None):
                c = NAT_PASS        # an uplink has one of them (or neither): the other passes
                if self.nat6 is not None:
                    c = self.nat6.out6(base + off[i] + 14, lens[i] - 14, u, ts[i],
                                       (vh[i].flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) != 0, self.hint(i))
                    napt = c == NAT_OK       # NAPT66 filters what it translates, like NAPT44
                if c == NAT_PASS and self.npt is not None:
                    c = self.npt.out6(base + off[i] + 14, lens[i] - 14, u)
                if c != NAT_OK and c != NAT_PASS:
                    self.drop(i, nat_reason(c))
                    continue
            # the stateful edge learns the flow by its LAN addresses (the row: before NPTv6);
            # NAPT44's mappings are its own edge for what it translated
            if self.edge is not None and self.edge_mode_c[u] and not napt:
                if self.edge.out_c(r, tcp_flags, ts[i], self.ehint(i)) == EDGE_FULL:
                    self.drop(i, rows.R_EDGE_FULL)
                    continue
            self.pidx[u * self.cap + self.pn[u]] = <int32_t>i
            self.pn[u] += 1

    cdef void napt_in_c(self, int u, uint8_t* base, int64_t* off, uint32_t* lens, virtio_net_hdr* vh,
                        const double* ts, const uint8_t* vlan, Py_ssize_t n, int family) noexcept nogil:
        """The batch's replies to translated flows of one family (NAPT44: 4, NAPT66: 6) put
        back under one hold of that translator's lock, before inbound_c's loop reads
        nat_in[i]: the frames that loop would hand the translator (routed, in the time window,
        untagged, to the uplink's MAC), no other.  One family at a time, so no worker ever
        waits for one lock while holding the other."""
        cdef Py_ssize_t i
        cdef mmr_row* r
        cdef int* lock = &self.nat.lock if family == 4 else &self.nat6.lock
        cdef bint held = False
        cdef const int16_t* outp = self.pipe.outp
        cdef mmr_row* rp = self.pipe.rp
        cdef double t0 = self.t_start, t1 = self.t_end
        cdef const uint8_t* mac = self.up_mac_c + 6 * u
        cdef uint32_t mac4 = (<const uint32_t*>mac)[0]
        cdef uint16_t mac2 = (<const uint16_t*>(mac + 4))[0]
        cdef const uint8_t* f
        for i in range(n):
            r = &rp[i]
            f = base + off[i]
            if (outp[i] != OUT_ROUTE or r.family != family or ts[i] < t0 or ts[i] >= t1
                    or (vlan != NULL and vlan[i]) or (<const uint32_t*>f)[0] != mac4
                    or (<const uint16_t*>(f + 4))[0] != mac2):
                continue
            if not held:
                spin_lock(lock)
                held = True
            if family == 4:
                self.nat_in_c[i] = <int8_t>self.nat.in4_locked(f + r.l3_off, lens[i] - r.l3_off, u, ts[i],
                                                               (vh[i].flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) != 0)
            else:
                self.nat_in_c[i] = <int8_t>self.nat6.in6_locked(f + r.l3_off, lens[i] - r.l3_off, u, ts[i],
                                                                (vh[i].flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) != 0)
        if held:
            spin_unlock(lock)

    cdef inline int32_t* ehint(self, Py_ssize_t i) noexcept nogil:
        """Row i's flow's memory of its edge record (NULL: no flow record, or none kept)."""
        cdef uint32_t rec = self.pipe.frec[i]
        return self.edge_hint_c + rec if rec < self.n_edge_hint else NULL

    cdef inline int32_t* hint(self, Py_ssize_t i) noexcept nogil:
        """Row i's flow's memory of its translation (NULL: no flow record, or none kept)."""
        cdef uint32_t rec = self.pipe.frec[i]
        return self.nat_hint_c + rec if rec < self.n_hint else NULL

    cdef inline void drop(self, Py_ssize_t i, int reason) noexcept nogil:
        self.pipe.outp[i] = OUT_DROP
        self.pipe.rp[i].reason = <uint8_t>reason
        self.cnt[reason] += 1

    cdef void inbound_c(self, int u, uint8_t* base, int64_t* off, uint32_t* lens,
                        virtio_net_hdr* vh, const double* ts, const uint8_t* vlan, Py_ssize_t n) noexcept nogil:
        """uplink u -> inside: self.pipe.outp[i] ends as 0 (frame ready, listed in the inside
        list), KERNEL or DROP."""
        cdef Py_ssize_t i, k
        cdef int h, v, how, c
        cdef mmr_row* r
        cdef const uint8_t* f
        cdef const uint8_t* net
        cdef bint inside, napt
        cdef int16_t* out = self.pipe.outp
        cdef int32_t* lst = self.pidx + self.n_up * self.cap
        cdef double now = ts[n - 1] if n else 0.0
        self.pipe.parse_c(base, off, lens, n)
        self.pn[self.n_up] = 0
        if (self.nat_mode_c[u] and self.nat is not None) or self.nat6 is not None:
            memset(self.nat_in_c, 0xFF, n)       # (read only where a translator is)
            if self.nat_mode_c[u] and self.nat is not None:
                self.napt_in_c(u, base, off, lens, vh, ts, vlan, n, 4)
            if self.nat6 is not None:
                self.napt_in_c(u, base, off, lens, vh, ts, vlan, n, 6)
        how = (RW_MACS | RW_HOP) if self.router else RW_CSUM_GSO
        if not self.router and self.tun is not None and self.tun.vnet_hdr:
            how = 0                 # the TUN takes super-frames and their checksum requests
        for i in range(n):
            if out[i] != OUT_ROUTE:
                if out[i] == OUT_KERNEL:
                    self.cnt[CNT_KERNEL] += 1
                elif (self.router and self.pipe.rp[i].reason == rows.R_OPT_UNKNOWN_ICMP
                        and ts[i] >= self.t_start and ts[i] < self.t_end and (vlan == NULL or not vlan[i])):
                    self.param_problem(1, u, base + off[i], lens[i], &self.pipe.rp[i], self.up_mac_c + 6 * u, now)
                continue
            r = &self.pipe.rp[i]
            f = base + off[i]
            if ts[i] < self.t_start or ts[i] >= self.t_end:
                out[i] = OUT_KERNEL
                self.cnt[CNT_HANDOVER] += 1
                continue
            napt = False
            if not (vlan != NULL and vlan[i]) and memcmp(f, self.up_mac_c + 6 * u, 6) == 0:
                # a reply to a translated flow (sent to this uplink's MAC, not another host's
                # on the ISP's segment): back to the LAN host's (host mode: the VI's) address
                # and port; what NAT passes (the machine's own sockets) stays the kernel's
                c = NAT_PASS
                if r.family == 4 and self.nat_mode_c[u] and self.nat is not None:
                    c = self.nat_in_c[i]         # translated before the loop (napt_in_c)
                    if c < 0:                    # (napt_in_c passed it by: its rules and these differ)
                        c = self.nat.in4(base + off[i] + r.l3_off, lens[i] - r.l3_off, u, ts[i],
                                         (vh[i].flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) != 0)
                    if c == NAT_OK:
                        memcpy(r.dst + 12, base + off[i] + r.l3_off + 16, 4)
                        napt = True
                elif r.family == 6 and (self.npt is not None or self.nat6 is not None):
                    if self.nat6 is not None:
                        c = self.nat_in_c[i]
                        if c < 0:
                            c = self.nat6.in6(base + off[i] + r.l3_off, lens[i] - r.l3_off, u, ts[i],
                                              (vh[i].flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) != 0)
                        napt = c == NAT_OK   # NAPT66 filtered it, like NAPT44
                    if c == NAT_PASS and self.npt is not None:
                        c = self.npt.in6(base + off[i] + r.l3_off, lens[i] - r.l3_off, u)
                    if c == NAT_OK:
                        memcpy(r.dst, base + off[i] + r.l3_off + 24, 16)
                if c != NAT_OK and c != NAT_PASS:
                    self.drop(i, nat_reason(c))
                    continue
            if (vlan != NULL and vlan[i]) or not_routable(r):
                inside = False                   # a VLAN device's, multicast, link-local
            elif self.router:
                inside = False
                inside = (memcmp(f, self.up_mac_c + 6 * u, 6) == 0 and self.local.get_c(r.dst) < 0
                          and in_nets(r.dst, self.lan_net_c, self.n_lan))
            else:
                inside = self.local.get_c(r.dst) >= 0
            if not inside:
                out[i] = OUT_KERNEL
                self.cnt[CNT_KERNEL] += 1
                continue
            # the stateful edge: to the LAN only what belongs to its flows (NAPT44 filtered
            # what it translated back), unless the destination is routed open or a new
            # connection a [[forward]] opens (looked at only when no flow matched)
            if (self.router and self.edge is not None and self.edge_mode_c[u] and not napt
                    and not in_nets(r.dst, self.open_net_c, self.n_open)
                    and self.edge.in_c(r, f, lens[i], ts[i]) != EDGE_OK and not self.forwarded(r, u)):
                self.drop(i, rows.R_EDGE_UNSOLICITED)
                continue
            h = 0
            if self.router:
                h = self.hosts.get_c(r.dst)
                if h < 0 or h >= self.n_hosts:
                    self.drop(i, rows.R_NO_NEIGHBOUR)
                    if take_token(&self.neigh_bucket, now):
                        self.punt(PUNT_NEIGHBOUR, 1, u, f, 0, r, 0)
                    continue
            if self.seg_len(f, r, &vh[i], lens[i]) > <uint32_t>self.in_mtu:
                self.drop(i, rows.R_OVERSIZE)
                if self.router:
                    if take_token(&self.icmp_bucket, now):
                        self.punt(PUNT_TOO_BIG, 1, u, f, lens[i], r, <uint32_t>self.in_mtu)
                    else:
                        self.cnt[CNT_ICMP_LIMITED] += 1
                continue
            if vh[i].flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
                if vh[i].gso_type == VIRTIO_NET_HDR_GSO_NONE or how & RW_CSUM_GSO:
                    self.cnt[CNT_CSUM_FINISHED] += 1
                else:
                    self.cnt[CNT_SUPER_FRAMES] += 1
            v = rewrite_one(base, &off[i], &lens[i], r, &vh[i], self.in_mac_c, self.host_mac_c + 6 * h, how)
            if v == VERDICT_HOP_LIMIT:
                self.drop(i, rows.R_HOP_LIMIT)
                if take_token(&self.icmp_bucket, now):
                    self.punt(PUNT_TIME_EXCEEDED, 1, u, f, lens[i], r, 0)
                else:
                    self.cnt[CNT_ICMP_LIMITED] += 1
                continue
            if v == VERDICT_BAD_OFFLOAD:
                self.drop(i, rows.R_BAD_OFFLOAD)
                continue
            out[i] = 0
            lst[self.pn[self.n_up]] = <int32_t>i
            self.pn[self.n_up] += 1

    # ------------------------------------------------------------------ offline API
    def _batch_args(self, buf, offsets, lengths, vnet, ts):
        n = len(offsets)
        if n > self.cap:
            raise ValueError(f"a batch is at most {self.cap} frames")
        blen = buf.shape[0]
        off = np.ascontiguousarray(offsets, np.int64)
        ln = np.ascontiguousarray(lengths, np.uint32)
        if len(ln) != n or ((off < 0) | (off > blen) | (ln.astype(np.int64) > blen - off)).any():
            raise ValueError("every frame must lie inside the buffer")
        vnet = np.zeros(max(n, 1), VNET_DTYPE) if vnet is None else np.ascontiguousarray(vnet)
        if vnet.dtype != VNET_DTYPE or len(vnet) < n:
            raise TypeError("vnet must be a VNET_DTYPE array covering the batch")
        ts = np.full(max(n, 1), time.time()) if ts is None else np.ascontiguousarray(ts, np.float64)
        if len(ts) < n:
            raise ValueError("ts must cover the batch")
        return n, off, ln, vnet, ts

    def outbound(self, uint8_t[::1] buf, offsets, lengths, vnet=None, ts=None):
        """Decide a batch going out (inside -> uplinks), rewriting in place.  Returns
        (out, offsets, lengths): out[i] = uplink, KERNEL or DROP (reason in self.pipe.rows);
        offsets/lengths of the frames as they would be sent."""
        n, off, ln, vnet, ts = self._batch_args(np.asarray(buf), offsets, lengths, vnet, ts)
        if n == 0:
            return np.zeros(0, np.int16), off, ln
        cdef int64_t[::1] o = off
        cdef uint32_t[::1] l = ln
        cdef uint8_t[::1] vb = vnet.view(np.uint8)
        cdef double[::1] t = ts
        self.outbound_c(&buf[0], &o[0], &l[0], <virtio_net_hdr*>&vb[0], &t[0], NULL, n)
        return np.asarray(self.pipe.out[:n]).copy(), off, ln

    def inbound(self, int u, uint8_t[::1] buf, offsets, lengths, vnet=None, ts=None):
        """Decide a batch coming in on uplink u (-> inside); as outbound(), with out[i] = 0
        for frames to pass inside."""
        if not 0 <= u < self.n_up:
            raise ValueError("no such uplink")
        n, off, ln, vnet, ts = self._batch_args(np.asarray(buf), offsets, lengths, vnet, ts)
        if n == 0:
            return np.zeros(0, np.int16), off, ln
        cdef int64_t[::1] o = off
        cdef uint32_t[::1] l = ln
        cdef uint8_t[::1] vb = vnet.view(np.uint8)
        cdef double[::1] t = ts
        self.inbound_c(u, &buf[0], &o[0], &l[0], <virtio_net_hdr*>&vb[0], &t[0], NULL, n)
        return np.asarray(self.pipe.out[:n]).copy(), off, ln

    def take_punts(self):
        """The punted records since the last call (a copy), and reset."""
        p = self.punts[:self.punt_n].copy()
        self.punt_n = 0
        return p

    # ------------------------------------------------------------------ live steps
    cpdef Py_ssize_t step_inside(self):
        """One batch from the inside source (LAN ring / TUN) to the uplinks; returns the
        number of frames read.  C only: after a wake-up every Python-level step would cost
        its cold-cache price before the frame goes out."""
        cdef Py_ssize_t n = 0, u, k
        cdef RxRing ring = self.in_ring
        cdef Tun tun = self.tun
        cdef TxSocket tx
        cdef double now
        cdef uint8_t* base
        cdef int64_t* off
        cdef uint32_t* lens
        cdef virtio_net_hdr* vh
        if ring is not None:
            with nogil:
                n = ring.batch_c(self.cap)
                if n:
                    self.cnt[CNT_RX_INSIDE] += n
                    self.outbound_c(ring.base, ring.off, ring.lens, ring.vh, ring.ts, ring.vlanp, n)
            base, off, lens, vh = ring.base, ring.off, ring.lens, ring.vh
        elif tun is not None:
            with nogil:
                n = tun.read_c()
                if n:
                    now = wall()
                    for k in range(n):
                        self.now_c[k] = now
                    self.cnt[CNT_RX_INSIDE] += n
                    # tun.vh: the TUN's virtio-net headers in the packet socket's convention
                    # (zeros without IFF_VNET_HDR): super-frames go out whole, segmented by the kernel
                    self.outbound_c(tun.buf, tun.off, tun.lens, tun.vh, self.now_c, NULL, n)
            base, off, lens, vh = tun.buf, tun.off, tun.lens, tun.vh
        else:
            return 0
        if n:
            for u in range(self.n_up):
                if self.pn[u] == 0:
                    continue
                tx = self.up_tx[u]
                if tx is None:
                    self.cnt[CNT_TX_ERRORS] += self.pn[u]
                    continue
                with nogil:
                    k = tx.send_c(base, off, lens, vh, self.pidx + u * self.cap, self.pn[u])
                self.cnt[CNT_TX_UPLINK] += k
                self.cnt[CNT_TX_ERRORS] += self.pn[u] - k
        if ring is not None:
            ring.release_c()
        return n

    cpdef Py_ssize_t step_uplink(self, int u):
        """One batch from uplink u to the inside; returns the number of frames read."""
        cdef RxRing ring = self.up_rx[u]
        cdef Py_ssize_t n, k = 0, i, j
        cdef int m
        cdef uint16_t* l3
        if ring is None or not 0 <= u < self.n_up:
            return 0
        with nogil:
            n = ring.batch_c(self.cap)
            if n:
                self.cnt[CNT_RX_UPLINK] += n
                self.inbound_c(u, ring.base, ring.off, ring.lens, ring.vh, ring.ts, ring.vlanp, n)
                m = self.pn[self.n_up]
                if m:
                    if self.router and self.in_tx is not None:
                        k = self.in_tx.send_c(ring.base, ring.off, ring.lens, ring.vh,
                                              self.pidx + self.n_up * self.cap, m)
                    elif self.tun is not None:
                        # the TUN takes the IP packet; rewrite moved every header to 14
                        l3 = self.l3c
                        for i in range(m):
                            j = self.pidx[self.n_up * self.cap + i]
                            l3[j] = 14
                        k = self.tun.write_c(ring.base, ring.off, ring.lens, l3, ring.vh,
                                             self.pidx + self.n_up * self.cap, m)
                    self.cnt[CNT_TX_INSIDE] += k
                    self.cnt[CNT_TX_ERRORS] += m - k
            ring.release_c()
        return n

    def run(self, pfd, Py_ssize_t n_side, double max_wait_us, double spin_us):
        """The forwarding loop's inner part, in C: forward whatever the sources hold, then
        keep looking (busy-poll, yielding the CPU to whoever else is runnable) for spin_us
        after the last frame, then sleep in ppoll() on every source and side descriptor.
        Returns the number of frames read as soon as Python has something to do: a side
        descriptor (pfd[:n_side]: netlink, probes, control) is ready, a source descriptor
        reports an error, a punt waits, a signal came, or max_wait_us passed (a timer).
        ``pfd``: a numpy array of struct pollfd (fd, events, revents); sources after the
        side descriptors."""
        cdef uint8_t[::1] raw = pfd.view(np.uint8)
        cdef pollfd* fds = <pollfd*>&raw[0] if pfd.shape[0] else NULL
        cdef Py_ssize_t nfds = pfd.shape[0], i, k, frames = 0
        cdef double t0 = mono(), t, deadline = t0 + max_wait_us * 1e-6
        cdef double spin = spin_us * 1e-6, wait, side_at = t0
        cdef int r, u
        cdef bint spinning, side = False
        cdef uint64_t kern
        cdef timespec ts, zero
        zero.tv_sec = 0
        zero.tv_nsec = 0
        while True:
            k = 0
            kern = self.cnt[CNT_KERNEL]
            if self.in_ring is not None:
                if self.in_ring.ready_c():
                    k += self.step_inside()
            elif self.tun is not None and self.tun_ready:
                self.tun_ready = False
                k += self.step_inside()
                if k >= self.cap or self.tun.more:
                    self.tun_ready = True          # a full batch (or buffer): more is waiting
            for u in range(self.n_up):
                if self.up_rx[u] is not None and (<RxRing>self.up_rx[u]).ready_c():
                    k += self.step_uplink(u)
            t = mono()
            if k:
                frames += k
                if <uint64_t>k > self.cnt[CNT_KERNEL] - kern:
                    # forwarded traffic keeps the loop looking; what only passes to the kernel
                    # (probe replies, ND, ARP: several a second on an idle router) does not
                    self.last_active = t
            if self.punt_n or t >= deadline:
                break
            if k:
                # under load the sources never run dry: look at the side descriptors (probe
                # replies, netlink, control) every half millisecond all the same
                if t - side_at >= 0.0005 and n_side:
                    side_at = t
                    with nogil:
                        r = ppoll(fds, n_side, &zero, NULL)
                    if r > 0:
                        break
                continue
            spinning = t - self.last_active < spin
            wait = 0.0 if spinning else deadline - t
            ts.tv_sec = <long>wait
            ts.tv_nsec = <long>((wait - ts.tv_sec) * 1e9)
            with nogil:
                if spinning:
                    sched_yield()
                r = ppoll(fds, nfds, &ts, NULL)
            if r < 0:
                break                              # EINTR: a signal for Python to handle
            if r == 0:
                continue
            for i in range(nfds):
                if fds[i].revents == 0:
                    continue
                if i < n_side or fds[i].revents & (POLLERR | POLLHUP | POLLNVAL):
                    side = True
                elif self.tun is not None and fds[i].fd == self.tun.fd:
                    self.tun_ready = True
            if side:
                break
        return frames
