"""The data path of mmr, top to bottom, one compiled call per stage per batch.

    frames (buf, offsets, lengths, ts)
      |
      v
    parse      engine._parse.parse_batch     one ROW_DTYPE row per frame, reason code per row
      |                                      (reason counters: the named drop table)
      v
    verdict    REASON -> forward / kernel / drop      out = -1 (to route) / KERNEL / DROP
      |
      v
    flowbase   engine._flowbase.lookup       hits: out = the flow's uplink (first decision)
      |  misses
      v
    classify   engine._classify.classify     service + preference (option, rules, DSCP)
      v
    select     engine._select.select         metric F = V_n . V_t -> uplink per new flow
      v
    flowbase   engine._flowbase.insert       new flows stored; later packets follow them
      |
      v
    out[i]     uplink index >= 0, or KERNEL (hand to the host), or DROP (reason in rows)

``Pipeline.process`` takes a batch and returns ``out`` (int16, one entry per frame).  It
allocates nothing per packet: every array is sized once for the largest batch.  Counters are
kept per uplink, per class and per reason; ``summary()`` reports them.
"""
from __future__ import annotations

import numpy as np

from engine import _classify, _flowbase, _parse, _select
from engine import constants as C

KERNEL = -2  # not ours (non-IP, ARP, ...): the host stack takes it
DROP = -3    # malformed, no usable uplink, ...: dropped, reason in rows["reason"]

# reason code -> initial out value before the flowbase: -1 (to route), KERNEL or DROP
_ACTION_OUT = np.array(
    [{"forward": -1, "kernel": KERNEL, "drop": DROP}[a] for _, _, a in C.REASONS], dtype=np.int16
)


class Pipeline:
    """parse -> classify -> flowbase -> select over batches of Ethernet frames.

    Takes: a config (engine.config.Config).  Emits per batch an int16 verdict per frame.
    Drops go nowhere but the counters: ``reasons`` (per reason code) names every one.
    """

    def __init__(self, cfg, batch: int = 256, seed: bytes | None = None):
        self.cfg = cfg
        self.batch = int(batch)
        self.n_uplinks = len(cfg.uplinks)
        self.uplink_names = [u.name for u in cfg.uplinks]
        self.classifier = _classify.Classifier(cfg)
        self.selector = _select.Selector(cfg)
        self.flows = _flowbase.FlowTable(cfg.flow_capacity, seed, cfg.idle_timeout_s)
        self.option_type = cfg.option_type
        self.idle_timeout = float(cfg.idle_timeout_s)
        self._alloc(self.batch)
        # counters
        self.reasons = np.zeros(C.N_REASONS, dtype=np.uint64)
        self.uplink_packets = np.zeros(self.n_uplinks, dtype=np.int64)
        self.uplink_bytes = np.zeros(self.n_uplinks, dtype=np.int64)
        self.class_packets = np.zeros(C.N_SERVICES, dtype=np.int64)
        self.packets = 0
        self.bytes = 0
        self.kernel_packets = 0
        self.drop_packets = 0
        self.created = 0
        self._last_expire = None
        # hook(rows, out, n, buf, offsets) run after parse; may set out[i] = KERNEL
        self.pre_route = None

    def _alloc(self, n: int) -> None:
        self.rows = np.zeros(n, dtype=C.ROW_DTYPE)
        self.out = np.empty(n, dtype=np.int16)
        self.service = np.zeros(n, dtype=np.uint8)
        self.pref = np.zeros(n, dtype=np.uint16)
        self.choice = np.empty(n, dtype=np.int16)
        self.cap = n

    def process(self, buf, offsets, lengths, ts) -> np.ndarray:
        """Run one batch; returns out[:n] (a view, valid until the next call)."""
        n = len(offsets)
        if n == 0:
            return self.out[:0]
        if n > self.cap:
            self._alloc(n)
        rows, out = self.rows, self.out
        _parse.parse_batch(buf, offsets, lengths, rows, self.option_type, self.reasons)
        reason = rows["reason"][:n]
        out[:n] = _ACTION_OUT[reason]
        if self.pre_route is not None:   # the live router: frames for the router itself
            self.pre_route(rows, out, n, buf, offsets)
        # Classify every packet: the per-class counters are per packet, and a new flow's
        # service/preference come from its first packet.
        self.classifier.classify(rows, self.service, self.pref, n)
        misses = self.flows.lookup(rows, ts, out, n)
        if misses:
            self.selector.select(self.service, self.pref, self.choice, n)
            self.created += self.flows.insert(
                rows, ts, out, self.choice, self.service, self.pref, n
            )
            unrouted = out[:n] == -1
            if unrouted.any():  # no usable uplink for these new flows
                k = int(unrouted.sum())
                rows["reason"][:n][unrouted] = C.REASON_NO_UPLINK
                self.reasons[C.REASON_NO_UPLINK] += k
                out[:n][unrouted] = DROP
        self._count(rows, out, n)
        return out[:n]

    def _count(self, rows, out, n) -> None:
        o = out[:n]
        length = rows["length"][:n]
        self.packets += n
        self.bytes += int(length.sum())
        fwd = o >= 0
        up = o[fwd]
        self.uplink_packets += np.bincount(up, minlength=self.n_uplinks)
        self.uplink_bytes += np.bincount(
            up, weights=length[fwd], minlength=self.n_uplinks
        ).astype(np.int64)
        self.class_packets += np.bincount(
            np.minimum(self.service[:n][fwd], C.N_SERVICES - 1), minlength=C.N_SERVICES
        )
        self.kernel_packets += int((o == KERNEL).sum())
        self.drop_packets += int((o == DROP).sum())

    def expire(self, now: float) -> int:
        """Idle expiry by the caller's clock (packet time in a replay, wall time live)."""
        return self.flows.expire(now, self.idle_timeout)

    def maybe_expire(self, now: float, every: float = 1.0) -> int:
        """Expire at most once per ``every`` seconds of the caller's clock."""
        if self._last_expire is None:
            self._last_expire = now
            return 0
        if now - self._last_expire < every:
            return 0
        self._last_expire = now
        return self.expire(now)

    def summary(self) -> dict:
        st = self.flows.stats()
        per_uplink_flows = self.flows.created_per_uplink(self.n_uplinks)
        return {
            "packets": int(self.packets),
            "bytes": int(self.bytes),
            "flows": {
                "created": int(st["created"]),
                "active": int(st["size"]),
                "expired": int(st["expired"]),
                "evicted": int(st["evicted"]),
            },
            "uplinks": {
                name: {
                    "packets": int(self.uplink_packets[i]),
                    "bytes": int(self.uplink_bytes[i]),
                    "flows": int(per_uplink_flows[i]),
                }
                for i, name in enumerate(self.uplink_names)
            },
            "classes": {
                name: int(self.class_packets[i]) for i, name in enumerate(C.SERVICE_NAMES)
            },
            "drops": {
                C.REASON_NAMES[code]: int(self.reasons[code])
                for code, _, action in C.REASONS
                if action == "drop" and self.reasons[code]
            },
            "kernel": int(self.kernel_packets),
            "notes": {
                C.REASON_NAMES[code]: int(self.reasons[code])
                for code, name, action in C.REASONS
                if action == "forward" and code != 0 and self.reasons[code]
            },
        }
