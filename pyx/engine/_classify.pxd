# The C contract of pyx/classify.pyx (engine._classify): rows -> service and preference.
from libc.stdint cimport uint8_t, uint16_t, int16_t, int32_t, uint64_t
from rows cimport mmr_row


cdef class Classifier:
    cdef readonly int n_rules
    cdef readonly int default_preference
    cdef int16_t[::1] r_proto
    cdef int32_t[:, ::1] r_ports        # sport_lo, sport_hi, dport_lo, dport_hi (-1: any)
    cdef uint8_t[:, ::1] r_src          # value[16] mask[16]
    cdef uint8_t[:, ::1] r_dst
    cdef uint8_t[::1] r_has_src
    cdef uint8_t[::1] r_has_dst
    cdef int16_t[::1] r_dscp
    cdef int16_t[::1] r_service
    cdef int32_t[::1] r_pref
    cdef uint8_t[::1] r_pin
    cdef readonly int n_pins
    cdef uint64_t[::1] hits
    cdef uint64_t tagged, untagged, reserved, dscp_derived, icmp_control

    cdef inline bint match(self, int k, const mmr_row* r) noexcept nogil
    cdef void classify_c(self, const mmr_row* rp, uint8_t* service_out, uint16_t* pref_out,
                         Py_ssize_t n) noexcept nogil
