# The C contract of pyx/edge.pyx (engine._edge): the stateful edge's connection table;
# pyx/forward.pyx calls out_c for what leaves by an uplink and in_c for what would reach the LAN.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t
from rows cimport mmr_row

cdef enum:
    EDGE_OK = 0
    EDGE_UNSOLICITED = 1     # in: no flow of the LAN's matches (nor, for an error, its quote)
    EDGE_FULL = 2            # out: a new flow and no slot left (the flow is dropped, counted)

cdef enum:
    EDGE_KEY = 40            # LAN address 16, remote address 16, LAN port 2, remote port 2, proto 1, 3 zero

cdef struct edge_flow:
    uint8_t key[40]
    double last
    uint32_t hash
    uint8_t state
    uint8_t used
    uint8_t _pad[2]


cdef class Edge:
    cdef int lock                  # workers share the table: one short critical section each
    cdef edge_flow* flows
    cdef int32_t* slots            # open addressing: flow index or -1
    cdef int32_t* free_flows       # a stack of free flow indexes
    cdef readonly uint32_t capacity
    cdef uint32_t mask
    cdef uint32_t n_free
    cdef uint64_t k0, k1
    cdef double t_syn, t_est, t_fin, t_rst, t_udp, t_udp2, t_icmp, t_other
    cdef public uint64_t full          # new flows refused: the table was full
    cdef readonly uint64_t hinted      # packets out whose flow came from their flow's hint (no hash, no probe)

    cdef int32_t find(self, const uint8_t* key, uint32_t h) noexcept nogil
    cdef void release(self, uint32_t m) noexcept nogil
    cdef double timeout(self, const edge_flow* e) noexcept nogil
    cdef int out_c(self, const mmr_row* r, uint8_t tcp_flags, double now, int32_t* hint) noexcept nogil
    cdef int in_c(self, const mmr_row* r, const uint8_t* frame, uint32_t length, double now) noexcept nogil
    cdef int out_locked(self, const mmr_row* r, uint8_t tcp_flags, double now, int32_t* hint) noexcept nogil
    cdef int in_locked(self, const mmr_row* r, const uint8_t* frame, uint32_t length, double now) noexcept nogil
    cdef int quoted(self, const mmr_row* r, const uint8_t* frame, uint32_t length) noexcept nogil
