# The C contract of pyx/select.pyx (engine._select): (service, preference) -> uplink.
from libc.stdint cimport uint8_t, uint16_t, int16_t, uint64_t


cdef class Selector:
    cdef readonly int n_uplinks
    cdef readonly object policy_numbers      # slot -> preference number
    cdef object terms                        # slot -> list of (char index, weights[4])
    cdef object pins                         # slot -> pinned uplink index or None
    cdef uint16_t[::1] pref_slot             # preference -> slot (0 when undefined)
    cdef uint8_t[::1] pref_defined
    cdef int16_t[:, ::1] best                # [slot, service] -> uplink or -1
    cdef object _norm
    cdef object _chars
    cdef object _usable
    cdef object _metric
    cdef uint64_t[::1] selected
    cdef uint64_t undefined, no_uplink

    cdef void select_c(self, const uint8_t* service, const uint16_t* pref, int16_t* out,
                       Py_ssize_t n) noexcept nogil
