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
    # an option's preference a pin uses is not honoured (bit p of pin_bits: preference p is a pin's)
    cdef uint8_t[::1] pin_bits          # 8192 bytes: one bit per preference
    cdef readonly int n_pin_prefs
    # [[trust]]: longest prefix first; t_svc bit s: service s allowed; t_at[k]..t_at[k+1]: its ranges
    cdef readonly int n_trust
    cdef uint8_t[:, ::1] t_net          # value[16] mask[16]
    cdef uint8_t[::1] t_svc
    cdef int32_t[::1] t_at
    cdef uint16_t[:, ::1] t_rng         # lo, hi (inclusive)
    cdef uint64_t own_untrusted, own_reserved_pref
    cdef uint64_t* untrusted            # into the engine's counter table after count_into
    cdef uint64_t* reserved_pref
    cdef readonly object _table

    cdef inline bint trusted(self, const mmr_row* r, int s, int p) noexcept nogil

    cdef inline bint match(self, int k, const mmr_row* r) noexcept nogil
    cdef void classify_c(self, const mmr_row* rp, uint8_t* service_out, uint16_t* pref_out,
                         Py_ssize_t n) noexcept nogil
