"""Baseline: the same work as mmr's pipeline, in pure Python with dpkt, per packet.

parse (dpkt) -> classify (option / rules / DSCP, per packet) -> dict flowbase -> selection
by the reference selector for new flows.  This is what a straightforward Python
implementation of the draft would do; the replay benchmark times mmr against it.
"""
from __future__ import annotations

import dpkt

from engine.ref.select import Selector

DSCP_SERVICE = {46: 2, 34: 3, 36: 3, 38: 3, 32: 3, 40: 3, 48: 1, 56: 1}


class PyPipeline:
    def __init__(self, cfg):
        self.cfg = cfg
        self.sel = Selector(cfg)
        self.flows = {}
        self.per_uplink = [0] * len(cfg.uplinks)
        self.drops = 0
        self.rules = cfg.rules

    def classify(self, ip, v6, l4, proto, sport, dport):
        if v6:
            hop = ip.extension_hdrs.get(0) if hasattr(ip, "extension_hdrs") else None
            if hop is not None:
                for opt in hop.options:
                    if opt["type"] == self.cfg.option_type and len(opt["data"]) == 3:
                        d = opt["data"]
                        s = d[0] if d[0] <= 3 else 0
                        return s, int.from_bytes(d[1:3], "big")
            dscp = ip.fc >> 2
        else:
            dscp = ip.tos >> 2
        service = pref = None
        for r in self.rules:
            if r.proto is not None and r.proto != proto:
                continue
            if r.dport is not None and not r.dport[0] <= dport <= r.dport[1]:
                continue
            if r.sport is not None and not r.sport[0] <= sport <= r.sport[1]:
                continue
            service, pref = r.service, r.preference
            break
        if service is None:
            service = DSCP_SERVICE.get(dscp, 0)
        return service, self.cfg.default_preference if pref is None else pref

    def packet(self, frame: bytes, ts: float) -> int:
        try:
            eth = dpkt.ethernet.Ethernet(frame)
        except dpkt.UnpackError:
            self.drops += 1
            return -3
        ip = eth.data
        v6 = isinstance(ip, dpkt.ip6.IP6)
        if not v6 and not isinstance(ip, dpkt.ip.IP):
            return -2
        l4 = ip.data
        proto = ip.p
        sport = getattr(l4, "sport", 0) if not isinstance(l4, bytes) else 0
        dport = getattr(l4, "dport", 0) if not isinstance(l4, bytes) else 0
        key = (ip.src, ip.dst, proto, sport, dport)
        f = self.flows.get(key)
        if f is None:
            service, pref = self.classify(ip, v6, l4, proto, sport, dport)
            up = self.sel.select_one(service, pref)
            f = self.flows[key] = [up, ts, 0, 0]
        f[1] = ts
        f[2] += 1
        f[3] += len(frame)
        if f[0] >= 0:
            self.per_uplink[f[0]] += 1
        return f[0]
