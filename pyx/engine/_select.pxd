# The C contract of pyx/select.pyx (engine._select): a new flow's (service, preference,
# source address) -> uplink.
from libc.stdint cimport uint8_t, uint16_t, int16_t, uint64_t
from engine._flowbase cimport FlowTable


cdef class Selector:
    cdef readonly int n_uplinks
    cdef readonly object policy_numbers      # slot -> preference number
    cdef object terms                        # slot -> list of (char index, weights[4])
    cdef object pins                         # slot -> pinned uplink index or None
    cdef object names                        # uplink names (carry_over checks them)
    cdef uint16_t[::1] pref_slot             # preference -> slot (0 when undefined)
    cdef uint8_t[::1] pref_defined
    cdef int16_t[:, ::1] best                # [slot, service] -> uplink or -1
    cdef object _norm
    cdef object _chars
    cdef object _usable
    cdef object _metric
    cdef uint64_t[::1] selected
    cdef uint64_t undefined, no_uplink, followed
    # load balancing (the slot of preference 3): smooth weighted round-robin
    cdef readonly int lb_slot
    cdef double[::1] weight_cfg              # configured weight, < 0: none (bandwidth_mbps)
    cdef double[::1] weight                  # effective weight; 0: no share (or not usable)
    cdef double[::1] wrr                     # the round-robin's current value per uplink
    cdef int16_t[::1] lb_order               # uplinks with a share, ties go to the first
    cdef int n_lb
    # stickiness: source address -> uplink of its last load-balanced flow
    cdef readonly double sticky_s            # 0: off
    cdef bint sticky_on
    cdef FlowTable sticky                    # keyed by the source alone; idle after sticky_s

    # resolvers pinned to the uplink whose network gave them (RFC 6419 2.3.1): address -> uplink
    cdef uint8_t[:, ::1] res_addr            # [k, 16] (IPv4 mapped)
    cdef int16_t[::1] res_up
    cdef readonly int n_res
    cdef uint8_t[::1] usable_c               # the usable mask, for the resolvers' uplinks
    cdef uint64_t res_hits, res_down

    cdef int16_t resolver_c(self, const uint8_t* dst) noexcept nogil
    cdef int16_t pick_c(self, const uint8_t* src, uint8_t service, uint16_t pref,
                        double ts) noexcept nogil
    cdef int16_t balance_c(self, const uint8_t* src, double ts) noexcept nogil
    cdef int16_t rotate_c(self) noexcept nogil
    cdef void select_c(self, const uint8_t* service, const uint16_t* pref, int16_t* out,
                       Py_ssize_t n) noexcept nogil
