# SipHash-1-3 over whole 64-bit words, shared by the flowbase (40-byte flow keys) and the
# forwarder's address table (16-byte addresses).  Keys are per process: a LAN host that
# chooses its addresses or ports cannot pile its entries into one probe chain.
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from *:
    """
    #include <string.h>
    static inline uint64_t mmr_rotl64(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }
    static inline uint64_t mmr_ld64(const uint8_t* p) { uint64_t v; memcpy(&v, p, 8); return v; }
    """
    uint64_t rotl "mmr_rotl64"(uint64_t x, int b) nogil
    uint64_t ld64 "mmr_ld64"(const uint8_t* p) nogil


cdef inline uint32_t siphash13(const uint8_t* k, int words, uint64_t k0, uint64_t k1) noexcept nogil:
    """SipHash-1-3 of `words` 64-bit words at k (length 8 * words bytes), low 32 bits."""
    cdef uint64_t v0 = k0 ^ 0x736f6d6570736575ULL
    cdef uint64_t v1 = k1 ^ 0x646f72616e646f6dULL
    cdef uint64_t v2 = k0 ^ 0x6c7967656e657261ULL
    cdef uint64_t v3 = k1 ^ 0x7465646279746573ULL
    cdef uint64_t m
    cdef int i, r
    for i in range(words + 1):
        m = ld64(k + 8 * i) if i < words else (<uint64_t>(8 * words)) << 56
        v3 ^= m
        v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32)
        v2 += v3; v3 = rotl(v3, 16); v3 ^= v2
        v0 += v3; v3 = rotl(v3, 21); v3 ^= v0
        v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32)
        v0 ^= m
    v2 ^= 0xFF
    for r in range(3):
        v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32)
        v2 += v3; v3 = rotl(v3, 16); v3 ^= v2
        v0 += v3; v3 = rotl(v3, 21); v3 ^= v0
        v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32)
    return <uint32_t>(v0 ^ v1 ^ v2 ^ v3)
