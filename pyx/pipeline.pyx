# cython: language_level=3
"""pipeline: the data path of mmr, top to bottom, over one batch of frames.

    frames (buf, offsets, lengths, ts)
      |
      v
    parse      engine._parse.parse_one      one ROW_DTYPE row per frame, reason code per row
      |                                     (reasons: the named drop table)
      v
    verdict    REASON -> forward / kernel / drop      out = -1 (to route) / KERNEL / DROP
      |
      |  (the live router marks here what is for the router itself: engine._forward)
      v
    classify   Classifier.classify_c        service + preference (option, rules, DSCP)
      v
    flowbase   FlowTable.lookup_c           hits: out = the flow's uplink (first decision)
      |  misses
      v
    select     Selector.resolver_c          a pinned resolver: its uplink (RFC 6419 2.3.1)
               Selector.pick_c              else metric F = V_n . V_t -> uplink per new flow
      |                                     (load balancing: weighted rotation, sticky sources)
      v
    flowbase   FlowTable.insert_c           new flows stored; later packets follow them
      |
      v
    out[i]     uplink index >= 0, or KERNEL (hand to the host), or DROP (reason in rows)

Takes   a config (engine.config.Config) and batches of Ethernet frames.
Emits   ``process()`` returns ``out`` (int16, one entry per frame); the compiled forwarding
        steps call ``parse_c`` and ``route_c`` with the pre-route decision in between.
Counts  per reason, per uplink (packets, bytes), per class, kernel, drop.

Every array is allocated once for the largest batch: no Python object per packet.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t, int64_t
from libc.string cimport memset

cimport rows
from rows cimport mmr_row
from engine._parse cimport parse_one_ex
from engine._classify cimport Classifier
from engine._select cimport Selector
from engine._flowbase cimport FlowTable

import numpy as np

from engine import _classify, _flowbase, _select
from engine import constants as C

KERNEL = OUT_KERNEL
DROP = OUT_DROP

cdef int16_t ACTION[64]          # reason code -> initial out value
for _code, _name, _action in C.REASONS:
    ACTION[_code] = {"forward": OUT_ROUTE, "kernel": OUT_KERNEL, "drop": OUT_DROP}[_action]


cdef class Pipeline:
    """parse -> classify -> flowbase -> select over batches of Ethernet frames.

    Drops go nowhere but the counters: ``reasons`` (per reason code) names every one.
    """

    def __init__(self, cfg, batch=256, seed=None):
        self.cfg = cfg
        self.n_uplinks = len(cfg.uplinks)
        self.option_type = cfg.option_type
        self.honour_unknown = True       # RFC 8200 4.2 as a router; the host-mode forwarder clears it
        self.idle_timeout = float(cfg.idle_timeout_s)
        self.classifier = _classify.Classifier(cfg)
        self.selector = _select.Selector(cfg)
        self.flows = _flowbase.FlowTable(cfg.flow_capacity, seed, cfg.idle_timeout_s)
        self.reasons = np.zeros(C.N_REASONS, np.uint64)
        self.uplink_packets = np.zeros(max(self.n_uplinks, 1), np.uint64)
        self.uplink_bytes = np.zeros(max(self.n_uplinks, 1), np.uint64)
        self.class_packets = np.zeros(C.N_SERVICES, np.uint64)
        cdef uint64_t[::1] a = self.reasons
        cdef uint64_t[::1] b = self.uplink_packets
        cdef uint64_t[::1] c = self.uplink_bytes
        cdef uint64_t[::1] d = self.class_packets
        self.reason_c, self.up_pk, self.up_by, self.cls_pk = &a[0], &b[0], &c[0], &d[0]
        self._last_expire = None
        self.alloc(int(batch))

    def count_into(self, table):
        """Count reasons into table[:N_REASONS] (the engine's one counter table) from now on."""
        view = table[:C.N_REASONS]
        if view.dtype != np.uint64 or not view.flags.c_contiguous:
            raise TypeError("a uint64 counter table")
        view += self.reasons
        self.reasons = view
        cdef uint64_t[::1] a = view
        self.reason_c = &a[0]
        self.classifier.count_into(table)

    def alloc(self, Py_ssize_t n):
        """(Re)size the per-batch arrays for batches of up to n frames."""
        n = max(n, 1)
        self.rows = np.zeros(n, C.ROW_DTYPE)
        self.out = np.zeros(n, np.int16)
        self.service = np.zeros(n, np.uint8)
        self.pref = np.zeros(n, np.uint16)
        self.choice = np.zeros(n, np.int16)
        self.flow_rec = np.zeros(n, np.uint32)
        cdef uint8_t[::1] r = self.rows.view(np.uint8)
        cdef uint32_t[::1] fr = self.flow_rec
        cdef int16_t[::1] o = self.out
        cdef uint8_t[::1] s = self.service
        cdef uint16_t[::1] p = self.pref
        cdef int16_t[::1] ch = self.choice
        self.rp, self.outp, self.svc, self.prf, self.chc = <mmr_row*>&r[0], &o[0], &s[0], &p[0], &ch[0]
        self.frec = &fr[0]
        self.cap = n

    def apply(self, cfg):
        """A reloaded policy: new rules and policies, same flowbase (its flows keep their
        uplinks).  The caller pushes the usable mask and measurements into the selector."""
        classifier = _classify.Classifier(cfg)
        if self.classifier._table is not None:
            classifier.count_into(self.classifier._table)     # the engine's counter table
        self.classifier = classifier
        selector = _select.Selector(cfg)
        selector.carry_over(self.selector)        # same uplinks: rotation and sticky sources kept
        self.selector = selector
        self.cfg = cfg
        self.idle_timeout = float(cfg.idle_timeout_s)

    cdef void parse_c(self, const uint8_t* base, const int64_t* off, const uint32_t* lens,
                      Py_ssize_t n) noexcept nogil:
        """Rows and initial verdicts of frames 0..n (n <= cap; offsets checked by the caller)."""
        cdef Py_ssize_t i
        cdef int rc
        cdef uint8_t dummy = 0
        for i in range(n):
            memset(&self.rp[i], 0, sizeof(mmr_row))
            if lens[i] == 0:
                rc = parse_one_ex(&dummy, 0, self.option_type, self.honour_unknown, &self.rp[i])
            else:
                rc = parse_one_ex(base + off[i], lens[i], self.option_type, self.honour_unknown,
                                  &self.rp[i])
            self.rp[i].reason = <uint8_t>rc
            self.reason_c[rc] += 1
            self.outp[i] = ACTION[rc]

    cdef void route_c(self, const double* ts, Py_ssize_t n) noexcept nogil:
        """Every frame still at OUT_ROUTE gets its flow's uplink, or a new flow's; counts."""
        cdef Py_ssize_t i, misses
        cdef int16_t o
        cdef uint8_t s
        # classify every packet: the per-class counters are per packet, and a new flow's
        # service and preference come from its first packet
        self.classifier.classify_c(self.rp, self.svc, self.prf, n)
        memset(self.frec, 0xFF, n * sizeof(uint32_t))
        misses = self.flows.lookup_c(self.rp, ts, self.outp, n, self.frec)
        if misses:
            self.new_flows_c(ts, n)
        for i in range(n):
            o = self.outp[i]
            self.packets += 1
            self.bytes += self.rp[i].length
            if o == OUT_ROUTE:              # no usable uplink for this new flow
                self.rp[i].reason = rows.R_NO_UPLINK
                self.reason_c[rows.R_NO_UPLINK] += 1
                self.outp[i] = OUT_DROP
                self.drop_packets += 1
            elif o >= 0:
                self.up_pk[o] += 1
                self.up_by[o] += self.rp[i].length
                s = self.svc[i] if self.svc[i] < 4 else 0
                self.cls_pk[s] += 1
            elif o == OUT_KERNEL:
                self.kernel_packets += 1
            else:
                self.drop_packets += 1

    cdef void new_flows_c(self, const double* ts, Py_ssize_t n) noexcept nogil:
        """The misses in packet order: a packet of a flow created earlier in this batch joins
        it; any other gets an uplink from the selector (once per new flow: the weighted
        rotation and the sticky sources turn per flow, not per packet) and becomes a flow."""
        cdef Py_ssize_t i, made = 0
        cdef int16_t none = -1
        for i in range(n):
            if self.outp[i] != OUT_ROUTE:
                continue
            if made:
                self.flows.insert_c(&self.rp[i], &ts[i], &self.outp[i], &none, &self.svc[i], &self.prf[i], 1,
                                    &self.frec[i])
                if self.outp[i] != OUT_ROUTE:
                    continue
            # a pinned resolver takes its uplink (RFC 6419 2.3.1), anything else the metric's
            self.chc[i] = self.selector.resolver_c(self.rp[i].dst) if self.selector.n_res else -2
            if self.chc[i] == -2:
                self.chc[i] = self.selector.pick_c(self.rp[i].src, self.svc[i], self.prf[i], ts[i])
            if self.chc[i] >= 0:
                made += self.flows.insert_c(&self.rp[i], &ts[i], &self.outp[i], &self.chc[i],
                                            &self.svc[i], &self.prf[i], 1, &self.frec[i])
        self.created += made

    def process(self, const uint8_t[::1] buf, const int64_t[::1] offsets, const uint32_t[::1] lengths,
                const double[::1] ts):
        """Run one batch; returns out[:n] (a view, valid until the next call)."""
        cdef Py_ssize_t n = offsets.shape[0], i
        cdef Py_ssize_t blen = buf.shape[0]
        if lengths.shape[0] != n or ts.shape[0] < n:
            raise ValueError("offsets, lengths and ts must cover the batch")
        for i in range(n):
            if offsets[i] < 0 or offsets[i] > blen or lengths[i] > blen - offsets[i]:
                raise ValueError(f"frame {i} (offset {offsets[i]}, length {lengths[i]}) runs past the buffer")
        if n == 0:
            return self.out[:0]
        if n > self.cap:
            self.alloc(n)
        with nogil:
            self.parse_c(&buf[0], &offsets[0], &lengths[0], n)
            self.route_c(&ts[0], n)
        return self.out[:n]

    def expire(self, double now):
        """Idle expiry by the caller's clock (packet time in a replay, wall time live)."""
        return self.flows.expire(now, self.idle_timeout)

    def maybe_expire(self, double now, double every=1.0):
        """Expire at most once per ``every`` seconds of the caller's clock."""
        if self._last_expire is None:
            self._last_expire = now
            return 0
        if now - self._last_expire < every:
            return 0
        self._last_expire = now
        return self.expire(now)

    def summary(self):
        st = self.flows.stats()
        per_uplink_flows = self.flows.created_per_uplink(self.n_uplinks)
        names = [u.name for u in self.cfg.uplinks]
        return {
            "packets": int(self.packets),
            "bytes": int(self.bytes),
            "flows": {"created": int(st["created"]), "active": int(st["size"]),
                      "expired": int(st["expired"]), "evicted": int(st["evicted"])},
            "uplinks": {name: {"packets": int(self.uplink_packets[i]), "bytes": int(self.uplink_bytes[i]),
                               "flows": int(per_uplink_flows[i])} for i, name in enumerate(names)},
            "classes": {name: int(self.class_packets[i]) for i, name in enumerate(C.SERVICE_NAMES)},
            "drops": {C.REASON_NAMES[code]: int(self.reasons[code])
                      for code, _, action in C.REASONS if action == "drop" and self.reasons[code]},
            "kernel": int(self.kernel_packets),
            "notes": {**{C.REASON_NAMES[code]: int(self.reasons[code])
                         for code, name, action in C.REASONS
                         if action == "forward" and code != 0 and self.reasons[code]},
                      **{k: v for k, v in self.classifier.counters().items()       # options not honoured
                         if k in ("untrusted_option", "reserved_preference") and v}},
        }
