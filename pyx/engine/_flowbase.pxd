# The C contract of pyx/flowbase.pyx (engine._flowbase): the flow table's layout and its
# batch lookup / insert for the compiled data path.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t
from rows cimport mmr_row

ctypedef struct fb_slot:
    uint32_t hash
    uint32_t rec            # NIL: empty

ctypedef struct fb_rec:
    uint8_t key[40]         # src[16] dst[16] sport dport (host order) proto, 3 zero bytes
    uint32_t hash
    uint32_t prev           # LRU neighbours (NIL at the ends); next doubles as free list
    uint32_t next
    uint8_t uplink
    uint8_t service
    uint16_t preference
    double first_seen
    double last_seen
    uint64_t packets
    uint64_t bytes


cdef class FlowTable:
    cdef fb_slot* idx
    cdef fb_rec* recs
    cdef readonly uint32_t capacity
    cdef readonly uint32_t slots_n
    cdef uint32_t mask
    cdef uint32_t size
    cdef uint32_t head, tail, free_head
    cdef uint64_t k0, k1
    cdef uint64_t created, expired, evicted, removed, rebound, lookups, hits, misses
    cdef uint64_t created_up[256]
    cdef bint exporting
    cdef readonly double idle_timeout
    cdef fb_rec* exp
    cdef size_t exp_n, exp_cap

    cdef inline void lru_unlink(self, uint32_t r) noexcept nogil
    cdef inline void lru_push(self, uint32_t r) noexcept nogil
    cdef inline void touch(self, uint32_t r) noexcept nogil
    cdef inline uint32_t find(self, const uint8_t* key, uint32_t h) noexcept nogil
    cdef inline void place(self, uint32_t h, uint32_t rec) noexcept nogil
    cdef inline void unindex(self, uint32_t rec) noexcept nogil
    cdef inline void export_rec(self, uint32_t rec) noexcept nogil
    cdef inline void delete(self, uint32_t rec) noexcept nogil
    cdef mmr_row* rows_ptr(self, rows_arr, Py_ssize_t n) except NULL
    cdef Py_ssize_t lookup_c(self, const mmr_row* rp, const double* ts, int16_t* out,
                             Py_ssize_t n, uint32_t* recs) noexcept nogil
    cdef Py_ssize_t insert_c(self, const mmr_row* rp, const double* ts, int16_t* out,
                             const int16_t* choice, const uint8_t* service,
                             const uint16_t* preference, Py_ssize_t n, uint32_t* recs) noexcept nogil
    cdef object recs_to_array(self, fb_rec* base, uint32_t* ids, size_t n, bint use_ids)
