# cython: language_level=3
"""classify: parsed rows -> (service class, preference) per packet.

Takes   rows (ROW_DTYPE) and the policy file's rules and default preference.
Emits   service_out[i] (0 data, 1 control, 2 VoIP, 3 video) and pref_out[i].
Counts  tagged, untagged, reserved_service, dscp_derived, icmp_control, rule hits.

With the traffic control option: the option's service (4..255 are reserved: data, counted)
and preference.  Without it (RFC 6419 per-application settings, then the draft's note on the
traffic class): the first matching [[rule]] sets service and/or preference; a service no rule
set comes from DSCP (EF -> VoIP; AF41/42/43, CS4, CS5 -> video; CS6, CS7 -> control), then
ICMPv6/ICMP other than echo -> control, else data; a preference no rule set is the
config's default_preference.  A rule with ``uplink = NAME`` (a pin: "only via NAME")
holds for tagged traffic too: its preference replaces the option's, the service is kept.
"""
from libc.stdint cimport uint8_t, uint16_t, int16_t, int32_t, int64_t, uint64_t

cimport rows
from rows cimport mmr_row
from netinet_in cimport IPPROTO_ICMP, IPPROTO_ICMPV6

import numpy as np
from engine.constants import ROW_DTYPE

cdef inline int dscp_service(uint8_t dscp) noexcept nogil:
    if dscp == 46:
        return 2
    if dscp == 34 or dscp == 36 or dscp == 38 or dscp == 32 or dscp == 40:
        return 3
    if dscp == 48 or dscp == 56:
        return 1
    return -1


cdef class Classifier:

    def __init__(self, cfg):
        rules = cfg.rules
        n = len(rules)
        self.n_rules = n
        self.default_preference = int(cfg.default_preference)
        self.r_proto = np.full(max(n, 1), -1, np.int16)
        self.r_ports = np.full((max(n, 1), 4), -1, np.int32)
        self.r_src = np.zeros((max(n, 1), 32), np.uint8)
        self.r_dst = np.zeros((max(n, 1), 32), np.uint8)
        self.r_has_src = np.zeros(max(n, 1), np.uint8)
        self.r_has_dst = np.zeros(max(n, 1), np.uint8)
        self.r_dscp = np.full(max(n, 1), -1, np.int16)
        self.r_service = np.full(max(n, 1), -1, np.int16)
        self.r_pref = np.full(max(n, 1), -1, np.int32)
        self.r_pin = np.zeros(max(n, 1), np.uint8)
        self.n_pins = 0
        self.hits = np.zeros(max(n, 1), np.uint64)
        for i, r in enumerate(rules):
            if r.proto is not None:
                self.r_proto[i] = r.proto
            if r.sport is not None:
                self.r_ports[i, 0], self.r_ports[i, 1] = r.sport
            if r.dport is not None:
                self.r_ports[i, 2], self.r_ports[i, 3] = r.dport
            for net, tbl, has in ((r.src, self.r_src, self.r_has_src), (r.dst, self.r_dst, self.r_has_dst)):
                if net is not None:
                    val = net.network_address.packed
                    mask = net.netmask.packed
                    for k in range(16):
                        tbl[i, k] = val[k]
                        tbl[i, 16 + k] = mask[k]
                    has[i] = 1
            if r.dscp is not None:
                self.r_dscp[i] = r.dscp
            if r.service is not None:
                self.r_service[i] = r.service
            if r.preference is not None:
                self.r_pref[i] = r.preference
            if r.pin:
                self.r_pin[i] = 1
                self.n_pins += 1

    cdef inline bint match(self, int k, const mmr_row* r) noexcept nogil:
        cdef int j
        if self.r_proto[k] >= 0 and self.r_proto[k] != r.proto:
            return False
        if self.r_ports[k, 0] >= 0 and not (self.r_ports[k, 0] <= r.sport <= self.r_ports[k, 1]):
            return False
        if self.r_ports[k, 2] >= 0 and not (self.r_ports[k, 2] <= r.dport <= self.r_ports[k, 3]):
            return False
        if self.r_dscp[k] >= 0 and self.r_dscp[k] != (r.tclass >> 2):
            return False
        if self.r_has_src[k]:
            for j in range(16):
                if (r.src[j] & self.r_src[k, 16 + j]) != self.r_src[k, j]:
                    return False
        if self.r_has_dst[k]:
            for j in range(16):
                if (r.dst[j] & self.r_dst[k, 16 + j]) != self.r_dst[k, j]:
                    return False
        return True

    def classify(self, rows_arr, uint8_t[::1] service_out, uint16_t[::1] pref_out, Py_ssize_t n=-1):
        """Fill service_out[0:n], pref_out[0:n] from rows[0:n]."""
        if rows_arr.dtype != ROW_DTYPE or not rows_arr.flags.c_contiguous:
            raise TypeError("rows must be a C-contiguous array of ROW_DTYPE")
        if n < 0:
            n = rows_arr.shape[0]
        if n > rows_arr.shape[0] or n > service_out.shape[0] or n > pref_out.shape[0]:
            raise ValueError("n is larger than rows or the output arrays")
        if n == 0:
            return
        cdef uint8_t[::1] rb = rows_arr.view(np.uint8).reshape(-1)
        with nogil:
            self.classify_c(<mmr_row*>&rb[0], &service_out[0], &pref_out[0], n)

    cdef void classify_c(self, const mmr_row* rp, uint8_t* service_out, uint16_t* pref_out,
                         Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t i
        cdef int k, s, p, ds
        cdef const mmr_row* r
        for i in range(n):
            r = &rp[i]
            if r.has_opt:
                self.tagged += 1
                s = r.service
                if s > 3:
                    s = 0
                    self.reserved += 1
                service_out[i] = <uint8_t>s
                pref_out[i] = r.preference
                if self.n_pins:                # a pin holds even against the option
                    for k in range(self.n_rules):
                        if self.r_pin[k] and self.match(k, r):
                            self.hits[k] += 1
                            pref_out[i] = <uint16_t>self.r_pref[k]
                            break
                continue
            self.untagged += 1
            s = -1
            p = -1
            for k in range(self.n_rules):
                if self.match(k, r):
                    self.hits[k] += 1
                    s = self.r_service[k]
                    p = self.r_pref[k]
                    break
            if s < 0:
                ds = dscp_service(r.tclass >> 2)
                if ds >= 0:
                    s = ds
                    self.dscp_derived += 1
                elif ((r.proto == IPPROTO_ICMPV6 and r.family == 6) or (r.proto == IPPROTO_ICMP and r.family == 4)) \
                        and (r.flags & rows.F_L4) and not (r.flags & rows.F_ECHO):
                    s = 1
                    self.icmp_control += 1
                else:
                    s = 0
            service_out[i] = <uint8_t>s
            pref_out[i] = <uint16_t>(p if p >= 0 else self.default_preference)

    def counters(self):
        return {
            "tagged": int(self.tagged), "untagged": int(self.untagged),
            "reserved_service": int(self.reserved), "dscp_derived": int(self.dscp_derived),
            "icmp_control": int(self.icmp_control),
            "rule_hits": [int(self.hits[k]) for k in range(self.n_rules)],
        }
