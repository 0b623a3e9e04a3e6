# The C contract of pyx/nat.pyx (engine._nat): NAPT44 and NPTv6 per uplink, in place on IP
# packets; pyx/forward.pyx calls out4/in4/out6/in6 for the uplinks that translate.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t

cdef enum:
    NAT_OK = 0
    NAT_PASS = 1           # not for translation (in: not to the uplink's address, or the router's own:
                           # a port outside the mappings', an echo, GRE, a later fragment unseen)
    NAT_UNKNOWN = 2        # in, to a mapping's port but no mapping (unsolicited, forged, expired)
    NAT_EXHAUSTED = 3      # no port (or no table slot) left for a new mapping
    NAT_UNSUPPORTED = 4    # a protocol or ICMP type NAPT cannot translate
    NAT_MALFORMED = 5      # headers cut short or inconsistent
    NAT_NO_ADDRESS = 6     # the uplink has no IPv4 address (yet)

cdef struct nat_map:
    uint32_t int_addr        # addresses and ports as they sit in the packet (network order)
    uint32_t rem_addr
    uint16_t int_port
    uint16_t rem_port
    uint16_t ext_port        # host order: the index of the reverse array
    uint8_t proto            # P_*
    uint8_t uplink
    uint8_t state
    uint8_t used
    uint32_t hash
    double last

cdef struct frag_rec:
    uint32_t rem_addr
    uint32_t int_addr
    uint16_t ip_id
    uint8_t proto
    uint8_t uplink
    double last

cdef enum:
    NPT_AVOID = 16         # outer addresses one uplink's NPT keeps clear of
    NPT_HELD = 2           # npt_map.active: the uplink has no prefix yet

cdef struct npt_map:
    uint8_t inner[16]        # the LAN prefix (bits past its length zero)
    uint8_t outer[16]        # the uplink's prefix of the same length
    uint8_t mask[16]
    uint16_t adj_out         # one's complement sum(outer) - sum(inner)
    uint16_t adj_in
    int plen
    int active               # 0: off, 1: mapping, NPT_HELD: no outer prefix yet (LAN sources dropped)
    int n_avoid
    uint8_t avoid[NPT_AVOID][16]   # outer addresses in use on the uplink's link: never a translation


cdef extern from *:
    """
    static inline void mmr_spin_lock(int* l) {
        while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE)) {
            while (__atomic_load_n(l, __ATOMIC_RELAXED)) {
    #if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
    #endif
            }
        }
    }
    static inline void mmr_spin_unlock(int* l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }
    """
    void spin_lock "mmr_spin_lock"(int* l) nogil
    void spin_unlock "mmr_spin_unlock"(int* l) nogil


cdef class Nat44:
    cdef int lock                  # workers share the translator: one short critical section each
    cdef nat_map* maps
    cdef int32_t* slots            # the forward table: mapping index or -1
    cdef int32_t* rev              # [uplink][proto][65536]: mapping index or -1
    cdef uint32_t* free_ports      # [uplink][proto]
    cdef uint32_t* addr            # [uplink]: the uplink's address, packet order (0: none)
    cdef int32_t* free_maps        # a stack of free mapping indexes
    cdef frag_rec* frags
    cdef readonly uint32_t capacity
    cdef readonly int n_uplinks
    cdef uint32_t mask
    cdef uint32_t n_free
    cdef uint64_t k0, k1
    cdef uint16_t* ports           # the ports mappings take, ascending
    cdef uint32_t n_ports
    cdef uint8_t* port_ok          # [65536]: 1 for a port in that list
    cdef double t_syn, t_est, t_fin, t_rst, t_udp, t_udp2, t_icmp
    cdef public uint64_t exhausted
    cdef public uint64_t moved         # new mappings of a flow another uplink carried before
    cdef readonly uint64_t hinted      # packets whose mapping came from their flow's hint (no hash, no probe)
    cdef uint32_t fwd_to[64]           # [[forward]] k's LAN host (packet order); rev holds -2 - k
    cdef uint16_t fwd_lo[64]           # its first external port (host order)
    cdef uint16_t fwd_to_lo[64]        # its first port on the LAN host (host order)
    cdef uint64_t** fwd_in             # [uplink] -> NULL or [proto TCP/UDP][65536 LAN host ports]:
                                       # a bit k per forward k whose LAN range holds the port
    cdef int n_fwd

    cdef inline uint32_t key_hash(self, uint32_t int_addr, uint32_t rem_addr, uint16_t int_port,
                                  uint16_t rem_port, uint8_t proto, uint8_t u) noexcept nogil
    cdef inline int32_t find(self, uint32_t h, uint32_t int_addr, uint32_t rem_addr, uint16_t int_port,
                             uint16_t rem_port, uint8_t proto, uint8_t u) noexcept nogil
    cdef void release(self, uint32_t m) noexcept nogil
    cdef int32_t create(self, uint32_t h, uint32_t int_addr, uint32_t rem_addr, uint16_t int_port,
                        uint16_t rem_port, uint8_t proto, uint8_t u, double now) noexcept nogil
    cdef inline void tcp_state(self, nat_map* e, uint8_t flags, bint reply) noexcept nogil
    cdef inline double timeout(self, const nat_map* e) noexcept nogil
    cdef inline int fwd_host(self, int u, int pi, uint32_t addr, uint16_t port) noexcept nogil
    cdef inline uint32_t frag_slot(self, uint32_t rem_addr, uint16_t ip_id, uint8_t proto, uint8_t u) noexcept nogil
    cdef int out4(self, uint8_t* ip, uint32_t n, int u, double now, bint pending, int32_t* hint) noexcept nogil
    cdef int out4_locked(self, uint8_t* ip, uint32_t n, int u, double now, bint pending,
                         int32_t* hint) noexcept nogil
    cdef int out_error(self, uint8_t* ip, uint32_t n, uint32_t l4, int u, uint32_t ext) noexcept nogil
    cdef int in4(self, uint8_t* ip, uint32_t n, int u, double now, bint pending) noexcept nogil
    cdef int in4_locked(self, uint8_t* ip, uint32_t n, int u, double now, bint pending) noexcept nogil
    cdef int in_error(self, uint8_t* ip, uint32_t n, uint32_t l4, int u) noexcept nogil
    cdef int one(self, uint8_t* ip, uint32_t n, int u, double now, bint out) noexcept nogil


cdef class Npt66:
    cdef int lock
    cdef npt_map* maps
    cdef readonly int n_uplinks

    cdef int out6(self, uint8_t* ip, uint32_t n, int u) noexcept nogil
    cdef int in6(self, uint8_t* ip, uint32_t n, int u) noexcept nogil
    cdef int out6_locked(self, uint8_t* ip, uint32_t n, int u) noexcept nogil
    cdef int in6_locked(self, uint8_t* ip, uint32_t n, int u) noexcept nogil


cdef struct frag6_rec:
    uint8_t rem_addr[16]
    uint8_t int_addr[16]
    uint32_t ident           # packet order
    uint8_t proto
    uint8_t uplink
    uint8_t used
    double last


cdef class Nat66(Nat44):
    # NAPT66 keeps Nat44's table, ports, timeouts and reverse arrays: its keys' whole addresses
    # sit beside the mapping in a6, hashed with the ports (key_hash6) and compared by find6
    cdef uint8_t* a6               # [capacity][32]: the LAN address, the remote address
    cdef uint8_t* addr6            # [uplink][16]: the uplink's address
    cdef uint8_t* has6             # [uplink]: 1 when addr6 holds one
    cdef frag6_rec* frags6

    cdef inline uint32_t fold(self, const uint8_t* a) noexcept nogil
    cdef inline uint32_t key_hash6(self, const uint8_t* int_addr, const uint8_t* rem_addr, uint16_t int_port,
                                   uint16_t rem_port, uint8_t pi, uint8_t u) noexcept nogil
    cdef int32_t find6(self, uint32_t h, const uint8_t* int_addr, const uint8_t* rem_addr, uint16_t int_port,
                       uint16_t rem_port, uint8_t pi, uint8_t u) noexcept nogil
    cdef int out6(self, uint8_t* ip, uint32_t n, int u, double now, bint pending, int32_t* hint) noexcept nogil
    cdef int in6(self, uint8_t* ip, uint32_t n, int u, double now, bint pending) noexcept nogil
    cdef int out6_locked(self, uint8_t* ip, uint32_t n, int u, double now, bint pending,
                         int32_t* hint) noexcept nogil
    cdef int in6_locked(self, uint8_t* ip, uint32_t n, int u, double now, bint pending) noexcept nogil
    cdef int one(self, uint8_t* ip, uint32_t n, int u, double now, bint out) noexcept nogil
    cdef int error6(self, uint8_t* ip, uint32_t n, uint32_t l4, int u, bint out) noexcept nogil
