# The C contract of pyx/pipeline.pyx (engine._pipeline): parse -> classify -> flowbase ->
# select over a batch, for the compiled forwarding steps.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t, int64_t
from rows cimport mmr_row
from engine._classify cimport Classifier
from engine._select cimport Selector
from engine._flowbase cimport FlowTable

cdef enum:
    OUT_ROUTE = -1     # still to be given an uplink
    OUT_KERNEL = -2    # not ours: the host stack takes it
    OUT_DROP = -3      # dropped, reason in the row


cdef class Pipeline:
    cdef readonly object cfg
    cdef public Classifier classifier
    cdef public Selector selector
    cdef readonly FlowTable flows
    cdef readonly int option_type, n_uplinks
    cdef public bint honour_unknown      # act on unknown hop-by-hop options (engine._parse.parse_one_ex)
    cdef readonly double idle_timeout
    cdef readonly Py_ssize_t cap
    cdef readonly object rows, out, service, pref, choice, flow_rec
    cdef mmr_row* rp
    cdef int16_t* outp
    cdef uint8_t* svc
    cdef uint16_t* prf
    cdef int16_t* chc
    cdef uint32_t* frec                  # per row: its flow's record in flows (0xFFFFFFFF: none)
    cdef readonly object reasons, uplink_packets, uplink_bytes, class_packets
    cdef uint64_t* reason_c
    cdef uint64_t* up_pk
    cdef uint64_t* up_by
    cdef uint64_t* cls_pk
    cdef public uint64_t packets, bytes, kernel_packets, drop_packets, created
    cdef object _last_expire

    cdef void parse_c(self, const uint8_t* base, const int64_t* off, const uint32_t* lens,
                      Py_ssize_t n) noexcept nogil
    cdef void route_c(self, const double* ts, Py_ssize_t n) noexcept nogil
    cdef void new_flows_c(self, const double* ts, Py_ssize_t n) noexcept nogil
