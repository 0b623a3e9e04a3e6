"""Reference pipeline: the same data path as engine.pipeline built from the reference stages.

Used by the tests as the oracle of the whole compiled path (per-packet verdicts, counters).
"""
from __future__ import annotations

import numpy as np

from engine import constants as C
from engine.pipeline import DROP, KERNEL
from engine.ref.classify import Classifier
from engine.ref.flowbase import FlowTable
from engine.ref.parse import parse_batch
from engine.ref.select import Selector

_ACTION = {"forward": -1, "kernel": KERNEL, "drop": DROP}


class RefPipeline:
    def __init__(self, cfg):
        self.cfg = cfg
        self.classifier = Classifier(cfg)
        self.selector = Selector(cfg)
        self.flows = FlowTable(cfg.flow_capacity, None, cfg.idle_timeout_s)
        self.reasons = np.zeros(C.N_REASONS, np.uint64)
        self.honour_unknown = True       # RFC 8200 4.2 as a router; host mode clears it

    def parse(self, buf, offsets, lengths):
        """Rows and initial verdicts (-1: to route, KERNEL, DROP) of a batch."""
        rows = np.zeros(len(offsets), C.ROW_DTYPE)
        parse_batch(buf, offsets, lengths, rows, self.cfg.option_type, self.reasons, self.honour_unknown)
        return rows, np.array([_ACTION[C.REASON_ACTION[int(r)]] for r in rows["reason"]], np.int16)

    def route(self, rows, out, ts) -> None:
        """Every row still at -1 gets its flow's uplink or a new flow's, else DROP (no_uplink)."""
        n = len(rows)
        svc = np.zeros(n, np.uint8)
        pref = np.zeros(n, np.uint16)
        self.classifier.classify(rows, svc, pref)
        if self.flows.lookup(rows, ts, out):
            made = 0
            none = np.full(1, -1, np.int16)
            for i in range(n):          # once per new flow, in packet order
                if out[i] != -1:
                    continue
                one = (rows[i:i + 1], ts[i:i + 1], out[i:i + 1])
                if made:                # a flow created earlier in this batch: join it
                    self.flows.insert(*one, none, svc[i:i + 1], pref[i:i + 1])
                    if out[i] != -1:
                        continue
                u = self.selector.resolver(bytes(rows[i]["dst"]))     # a pinned resolver first
                if u == -2:
                    u = self.selector.select_one(int(svc[i]), int(pref[i]), bytes(rows[i]["src"]), float(ts[i]))
                if u >= 0:
                    made += self.flows.insert(*one, np.array([u], np.int16), svc[i:i + 1], pref[i:i + 1])
        for i in range(n):
            if out[i] == -1:
                self.reasons[C.REASON_NO_UPLINK] += 1
                rows[i]["reason"] = C.REASON_NO_UPLINK
                out[i] = DROP

    def process(self, buf, offsets, lengths, ts):
        rows, out = self.parse(buf, offsets, lengths)
        self.route(rows, out, ts)
        return out
