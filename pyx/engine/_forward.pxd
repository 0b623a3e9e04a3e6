# The C contract of pyx/forward.pyx (engine._forward): the forwarding decisions and steps.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int8_t, int16_t, int32_t, int64_t
from rows cimport mmr_row, N_REASONS
from virtio_net cimport virtio_net_hdr
from engine._pipeline cimport Pipeline
from engine._ring cimport RxRing, TxSocket
from engine._tun cimport Tun
from engine._nat cimport Nat44, Npt66, Nat66
from engine._edge cimport Edge

# the events of the counter table, after the reasons (engine/counters.py: EVENTS, same order)
cdef enum:
    CNT_RX_INSIDE = N_REASONS
    CNT_RX_UPLINK
    CNT_TX_UPLINK
    CNT_TX_INSIDE
    CNT_KERNEL
    CNT_HANDOVER
    CNT_CSUM_FINISHED
    CNT_SUPER_FRAMES
    CNT_ICMP_SENT
    CNT_ICMP_LIMITED
    CNT_NEIGHBOUR_ASKED
    CNT_TX_ERRORS
    CNT_TRUNCATED
    CNT_RING_DROPS
    CNT_INTERNAL_ERRORS
    CNT_UNTRUSTED_OPTION         # counted by the classifier (engine._classify count_into)
    CNT_RESERVED_PREFERENCE
    CNT_LAN_GONE                 # counted by the engine (engine/router.py), never by the data path
    CNT_SIZE

# what the data path hands to Python (engine/datapath.py answers it)
cdef enum:
    PUNT_TIME_EXCEEDED = 1
    PUNT_TOO_BIG = 2
    PUNT_NEIGHBOUR = 3
    PUNT_PARAM_PROBLEM = 4       # RFC 8200 4.2: unknown option; the pointer in punt_rec.mtu

ctypedef struct punt_rec:
    uint8_t kind
    uint8_t side                 # 0: came in on the inside (LAN / VI), 1: on uplink `uplink`
    uint8_t uplink
    uint8_t family
    uint16_t l3_off
    uint16_t caplen              # bytes of the frame kept in data
    uint32_t mtu                 # PUNT_TOO_BIG: the MTU; PUNT_PARAM_PROBLEM: the pointer
    uint32_t length
    uint8_t addr[16]             # the address to resolve (PUNT_NEIGHBOUR)
    uint8_t data[1280]           # the frame's first bytes (the ICMP error quotes them)


cdef class AddrTable:
    cdef uint8_t* keys
    cdef int32_t* vals
    cdef readonly uint32_t capacity
    cdef uint32_t mask, size
    cdef uint64_t k0, k1

    cdef int32_t get_c(self, const uint8_t* key) noexcept nogil


cdef struct bucket:
    double rate, burst, tokens, last


cdef inline bint take_token(bucket* b, double now) noexcept nogil:
    """A token bucket: refill at b.rate a second up to b.burst, then take one if there is one."""
    if now > b.last:
        b.tokens = min(b.burst, b.tokens + (now - b.last) * b.rate)
        b.last = now
    if b.tokens >= 1.0:
        b.tokens -= 1.0
        return True
    return False


cdef class Forwarder:
    cdef readonly Pipeline pipe
    cdef readonly bint router
    cdef readonly int n_up
    cdef readonly Py_ssize_t cap
    cdef readonly object counters, up_mac, gw_mac, up_mtu, in_mac, host_mac, lan_net, kernel_net
    cdef uint64_t* cnt
    cdef uint8_t* up_mac_c
    cdef uint8_t* gw_mac_c
    cdef int32_t* up_mtu_c
    cdef readonly object up_strip        # per uplink: the option type to remove on the way out, 0: keep
    cdef int32_t* up_strip_c
    cdef uint8_t* in_mac_c
    cdef uint8_t* host_mac_c
    cdef uint8_t* lan_net_c
    cdef uint8_t* kernel_net_c
    cdef readonly Py_ssize_t n_hosts, n_lan, n_kernel
    cdef public int in_mtu
    cdef readonly AddrTable local, hosts
    cdef readonly AddrTable own               # host mode: an interface's own address -> its uplink
    cdef public double t_start, t_end, last_active
    cdef bint tun_ready
    cdef double* now_c
    cdef virtio_net_hdr* zero_vh
    cdef readonly object verdict, port_idx, port_n, punts, zero_vnet, now_ts, l3buf
    cdef uint8_t* verd
    cdef uint16_t* l3c
    cdef int32_t* pidx
    cdef int32_t* pn
    cdef punt_rec* pc
    cdef public Py_ssize_t punt_n
    cdef public bint param_problems              # router: answer opt_unknown_icmp (RFC 8200 4.2)
    cdef bucket icmp_bucket, neigh_bucket       # ICMP errors the router sends; frames punted for a neighbour
    cdef RxRing in_ring
    cdef TxSocket in_tx
    cdef Tun tun
    cdef list up_rx, up_tx
    cdef readonly Nat44 nat                      # NAPT44 for the uplinks with nat (None: none)
    cdef readonly Npt66 npt                      # NPTv6 for the uplinks with nat6 = "npt"
    cdef readonly Nat66 nat6                     # NAPT66 for the uplinks with nat6 = "masquerade"
    cdef readonly object nat_mode                # per uplink: 0 none, 1 private sources, 2 every source
    cdef uint8_t* nat_mode_c
    cdef readonly object nat_hint                # per flow record: its mapping last time (-1: none)
    cdef int32_t* nat_hint_c
    cdef readonly object edge_hint               # per flow record: its edge flow last time (-1: none)
    cdef int32_t* edge_hint_c
    cdef uint32_t n_edge_hint
    cdef readonly object nat_in                  # per frame of an inbound batch: NAPT's code (-1: not tried)
    cdef int8_t* nat_in_c
    cdef uint32_t n_hint
    cdef readonly Edge edge                      # the stateful edge's table (None: no edge)
    cdef readonly object edge_mode               # per uplink: 1 stateful, 0 open (a routed setup)
    cdef uint8_t* edge_mode_c
    cdef readonly object open_net                # routed prefixes: open to unsolicited inbound
    cdef uint8_t* open_net_c
    cdef readonly Py_ssize_t n_open
    cdef readonly object fwd_addr, fwd_meta, fwd_up  # [[forward]]: LAN address; proto, lo, hi; per uplink
    cdef uint8_t* fwd_addr_c
    cdef int32_t* fwd_meta_c
    cdef uint8_t* fwd_up_c
    cdef readonly Py_ssize_t n_fwd

    cdef inline bint forwarded(self, const mmr_row* r, int u) noexcept nogil

    cdef inline int32_t* hint(self, Py_ssize_t i) noexcept nogil
    cdef inline int32_t* ehint(self, Py_ssize_t i) noexcept nogil
    cdef void napt_in_c(self, int u, uint8_t* base, int64_t* off, uint32_t* lens, virtio_net_hdr* vh,
                        const double* ts, const uint8_t* vlan, Py_ssize_t n, int family) noexcept nogil
    cdef inline void drop(self, Py_ssize_t i, int reason) noexcept nogil
    cdef void punt(self, int kind, int side, int uplink, const uint8_t* frame, uint32_t length,
                   const mmr_row* r, uint32_t mtu) noexcept nogil
    cdef void param_problem(self, int side, int uplink, const uint8_t* frame, uint32_t length,
                            const mmr_row* r, const uint8_t* mac, double now) noexcept nogil
    cdef uint32_t seg_len(self, const uint8_t* frame, const mmr_row* r,
                          const virtio_net_hdr* vh, uint32_t length) noexcept nogil
    cdef void outbound_c(self, uint8_t* base, int64_t* off, uint32_t* lens, virtio_net_hdr* vh,
                         const double* ts, const uint8_t* vlan, Py_ssize_t n) noexcept nogil
    cpdef Py_ssize_t step_inside(self)
    cpdef Py_ssize_t step_uplink(self, int u)
    cdef void inbound_c(self, int u, uint8_t* base, int64_t* off, uint32_t* lens,
                        virtio_net_hdr* vh, const double* ts, const uint8_t* vlan, Py_ssize_t n) noexcept nogil
