# The C contract of pyx/parse.pyx (engine._parse): one frame into one row.
from libc.stdint cimport uint8_t, uint32_t
from rows cimport mmr_row

cdef int parse_one(const uint8_t* p, uint32_t flen, int option_type, mmr_row* r) noexcept nogil
# honour=False: unknown hop-by-hop options skipped whatever their action bits (host mode)
cdef int parse_one_ex(const uint8_t* p, uint32_t flen, int option_type, bint honour,
                      mmr_row* r) noexcept nogil
