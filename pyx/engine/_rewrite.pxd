# The C contract of pyx/rewrite.pyx (engine._rewrite): make one parsed frame ready to leave.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from rows cimport mmr_row
from virtio_net cimport virtio_net_hdr

cdef enum:
    RW_MACS = 1         # write the Ethernet source and destination
    RW_HOP = 2          # a router's hop: hop limit / TTL - 1 (IPv4 header checksum updated)
    RW_CSUM_GSO = 4     # finish the checksum of a super-frame too (it leaves as one packet)
    RW_STRIP = 8        # remove the traffic control option whose type is in bits 8..15 of how

cdef enum:
    VERDICT_OK = 0
    VERDICT_HOP_LIMIT = 1     # left untouched: the caller answers with time exceeded
    VERDICT_BAD_OFFLOAD = 2   # a checksum request that points outside the frame: drop

cdef uint16_t csum_fold(const uint8_t* p, size_t n, uint64_t seed) noexcept nogil
cdef uint32_t ip_end(const uint8_t* frame, uint32_t length, const mmr_row* r) noexcept nogil
cdef int finish_checksum(uint8_t* frame, uint32_t end, virtio_net_hdr* vh, bint gso_too) noexcept nogil
cdef uint32_t strip_option(uint8_t* p, uint32_t length, const mmr_row* r, virtio_net_hdr* vh,
                           int opt_type) noexcept nogil
cdef int rewrite_one(uint8_t* base, int64_t* off, uint32_t* length, const mmr_row* r,
                     virtio_net_hdr* vh, const uint8_t* smac, const uint8_t* dmac, int how) noexcept nogil
