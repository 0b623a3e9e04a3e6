# cython: language_level=3
"""classify: parsed rows -> (service class, preference) per packet.

Takes   rows (ROW_DTYPE) and the policy file's rules and default preference.
Emits   service_out[i] (0 data, 1 control, 2 VoIP, 3 video) and pref_out[i].
Counts  tagged, untagged, reserved_service, dscp_derived, icmp_control, rule hits;
        untrusted_option and reserved_preference (into the engine's counter table once
        count_into is called: the summary line, mmr status, the metrics).

With the traffic control option: the option's service (4..255 are reserved: data, counted)
and preference.  Without it (RFC 6419 per-application settings, then the draft's note on the
traffic class): the first matching [[rule]] sets service and/or preference; a service no rule
set comes from DSCP (EF -> VoIP; AF41/42/43, CS4, CS5 -> video; CS6, CS7 -> control), then
ICMPv6/ICMP other than echo -> control, else data; a preference no rule set is the
config's default_preference.  A rule with ``uplink = NAME`` (a pin: "only via NAME")
holds for tagged traffic too: its preference replaces the option's, the service is kept.

Pins are kept apart from the option's preference space: an option (or anything but a pin
rule) asking for a preference that a pin uses (PIN_BASE - uplink index, engine/config.py)
gets preference 0 (policy none, as an undefined preference) and is counted
(``reserved_preference``); the pin rules are applied after that check.

[[trust]] (per LAN source prefix, longest first; no table matches: everything allowed): an
option asking for a service (reserved services count as data) or a preference outside its
prefix's table is treated as if the packet had no option (rules, DSCP, default) and counted
(``untrusted_option``; the packet counts as untagged, not tagged).
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
        self.pin_bits = np.zeros(8192, np.uint8)
        pins = cfg.pin_preferences() if hasattr(cfg, "pin_preferences") else {}
        for num in pins:
            self.pin_bits[num >> 3] |= 1 << (num & 7)
        self.n_pin_prefs = len(pins)
        trust = sorted(getattr(cfg, "trust", []), key=lambda t: -t.src.prefixlen)   # stable: longest first
        nt = len(trust)
        self.n_trust = nt
        t_net = np.zeros((max(nt, 1), 32), np.uint8)
        t_svc = np.zeros(max(nt, 1), np.uint8)
        t_at = np.zeros(nt + 1, np.int32)
        ranges = []
        for k, t in enumerate(trust):
            t_net[k, :16] = list(t.src.network_address.packed)
            t_net[k, 16:] = list(t.src.netmask.packed)
            t_svc[k] = sum(1 << sv for sv in t.services)
            ranges.extend(t.preferences)
            t_at[k + 1] = len(ranges)
        self.t_net, self.t_svc, self.t_at = t_net, t_svc, t_at
        self.t_rng = np.array(ranges or [(1, 0)], np.uint16).reshape(-1, 2)
        self.own_untrusted = 0
        self.own_reserved_pref = 0
        self.untrusted = &self.own_untrusted
        self.reserved_pref = &self.own_reserved_pref
        self._table = None
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

    def count_into(self, table):
        """Count untrusted_option and reserved_preference into the engine's counter table
        (engine/counters.py) from now on."""
        from engine import counters as CT
        if table.dtype != np.uint64 or not table.flags.c_contiguous or table.shape[0] != CT.SIZE:
            raise TypeError("the engine's uint64 counter table")
        cdef uint64_t[::1] t = table
        if self._table is None:
            t[CT.INDEX["untrusted_option"]] += self.untrusted[0]
            t[CT.INDEX["reserved_preference"]] += self.reserved_pref[0]
        self._table = table
        self.untrusted = &t[CT.INDEX["untrusted_option"]]
        self.reserved_pref = &t[CT.INDEX["reserved_preference"]]

    cdef inline bint trusted(self, const mmr_row* r, int s, int p) noexcept nogil:
        """May an option from r.src ask for service s and preference p?  The longest
        [[trust]] prefix that holds r.src decides; none holds it: yes."""
        cdef int k, j, a
        cdef bint inside
        for k in range(self.n_trust):
            inside = True
            for j in range(16):
                if (r.src[j] & self.t_net[k, 16 + j]) != self.t_net[k, j]:
                    inside = False
                    break
            if not inside:
                continue
            if not (self.t_svc[k] >> s) & 1:
                return False
            for a in range(self.t_at[k], self.t_at[k + 1]):
                if self.t_rng[a, 0] <= p <= self.t_rng[a, 1]:
                    return True
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
                s = r.service if r.service <= 3 else 0
                if self.n_trust == 0 or self.trusted(r, s, r.preference):
                    self.tagged += 1
                    if r.service > 3:
                        self.reserved += 1
                    service_out[i] = <uint8_t>s
                    p = r.preference
                    if self.n_pin_prefs and (self.pin_bits[p >> 3] >> (p & 7)) & 1:
                        p = 0                   # a pin's preference: not the option's to ask for
                        self.reserved_pref[0] += 1
                    pref_out[i] = <uint16_t>p
                    if self.n_pins:            # a pin holds even against the option
                        for k in range(self.n_rules):
                            if self.r_pin[k] and self.match(k, r):
                                self.hits[k] += 1
                                pref_out[i] = <uint16_t>self.r_pref[k]
                                break
                    continue
                self.untrusted[0] += 1          # asked for more than its prefix may: as untagged
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
            "untrusted_option": int(self.untrusted[0]), "reserved_preference": int(self.reserved_pref[0]),
            "rule_hits": [int(self.hits[k]) for k in range(self.n_rules)],
        }
