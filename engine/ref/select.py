"""Reference selector: the oracle for engine._select; scores every flow directly.

Load balancing (preference 3) keeps the same state as the compiled selector: the smooth
weighted round-robin's value per uplink and, with [select] sticky_s, a table of source
addresses (the reference flowbase keyed by the source alone).
"""
from __future__ import annotations

import ipaddress

import numpy as np

from engine import constants as C
from engine.config import characteristics_matrix
from engine.ref.flowbase import FlowTable

TIE = 1e-9
STICKY_SOURCES = 65536


def lb_weights(weight_cfg, chars, usable):
    """The configured weight, else bandwidth_mbps (1 each when none of the usable uplinks
    without a weight has a bandwidth); 0 when not usable."""
    bw = C.CHAR_INDEX["bandwidth"]
    defaulted = [u for u in range(len(weight_cfg)) if usable[u] and weight_cfg[u] < 0]
    one = all(chars[u][bw] <= 0.0 for u in defaulted)
    return [0.0 if not usable[u] else float(weight_cfg[u]) if weight_cfg[u] >= 0
            else 1.0 if one else max(float(chars[u][bw]), 0.0) for u in range(len(weight_cfg))]


class Selector:
    def __init__(self, cfg):
        self.cfg = cfg
        self.n_uplinks = len(cfg.uplinks)
        self.chars = characteristics_matrix(cfg).tolist()
        self.usable = [bool(u.usable) for u in cfg.uplinks]
        self.metric = [float(u.metric) for u in cfg.uplinks]
        self.c = {"selected": [0] * self.n_uplinks, "undefined_preference": 0, "no_uplink": 0, "sticky": 0,
                  "resolver_pinned": 0, "resolver_down": 0}
        self.weight_cfg = [-1.0 if u.weight is None else float(u.weight) for u in cfg.uplinks]
        self.wrr = [0.0] * self.n_uplinks
        self.sticky_s = float(cfg.select.get("sticky_s", 0.0))
        self.sticky = (FlowTable(min(cfg.flow_capacity, STICKY_SOURCES), None, self.sticky_s)
                       if self.sticky_s > 0 else None)
        self.weight = lb_weights(self.weight_cfg, self.chars, self.usable)
        self.pinned: dict[bytes, int] = {}          # resolver (16 bytes) -> its uplink
        self.set_resolvers([(a, k) for k, u in enumerate(cfg.uplinks) for a in getattr(u, "dns", [])])

    def set_resolvers(self, pairs) -> None:
        self.pinned = {}
        for a, u in pairs:
            if isinstance(a, str):
                ip = ipaddress.ip_address(a)
                a = ip.packed if ip.version == 6 else bytes(10) + b"\xff\xff" + ip.packed
            self.pinned.setdefault(bytes(a), int(u))   # the first listed wins, as the scan's

    def resolvers(self):
        return list(self.pinned.items())

    def resolver(self, dst: bytes) -> int:
        """A new flow to dst: its resolver's uplink, -1 while that one is unusable, -2 when
        dst is no pinned resolver."""
        u = self.pinned.get(bytes(dst))
        if u is None:
            return -2
        if self.usable[u]:
            self.c["resolver_pinned"] += 1
            self.c["selected"][u] += 1
            return u
        self.c["resolver_down"] += 1
        self.c["no_uplink"] += 1
        return -1

    def update(self, chars, usable, metric=None):
        self.chars = [list(map(float, row)) for row in chars]
        self.usable = [bool(x) for x in usable]
        if metric is not None:
            self.metric = [float(x) for x in metric]
        was = self.weight
        self.weight = lb_weights(self.weight_cfg, self.chars, self.usable)
        if self.weight != was:              # other shares: the rotation starts again
            self.wrr = [0.0] * self.n_uplinks
        for u in range(self.n_uplinks):
            if self.weight[u] <= 0 < was[u] and self.sticky is not None:
                self.sticky.rebind(u, -1)

    def normalized(self):
        out = []
        for u in range(self.n_uplinks):
            row = []
            for j, (_, _, kind) in enumerate(C.CHARACTERISTICS):
                mx = max([self.chars[v][j] for v in range(self.n_uplinks) if self.usable[v]], default=0.0)
                x = self.chars[u][j]
                if not self.usable[u]:
                    row.append(0.0)
                elif mx == 0.0:
                    row.append(1.0)
                elif kind == "benefit":
                    row.append(x / mx)
                else:
                    row.append(1.0 - x / mx)
            out.append(row)
        return out

    def score(self, service: int, preference: int) -> list:
        pol = self.cfg.policies.get(preference, self.cfg.policies[0])
        norm = self.normalized()
        s = service if service <= 3 else C.SERVICE_DATA
        out = []
        for u in range(self.n_uplinks):
            f = 0.0
            for cname, v in zip(pol.network, pol.flow):
                w = self.cfg.classes[v][s] if isinstance(v, str) else float(v)
                f += norm[u][C.CHAR_INDEX[cname]] * w
            out.append(f)
        return out

    def argmax(self, f, cands) -> int:
        """The first strictly better score among cands (in metric, config order)."""
        best = -1
        for u in cands:
            if best < 0 or f[u] > f[best] + TIE:
                best = u
        return best

    def lb_order(self) -> list:
        """Uplinks with a share, ranked by F of preference 3 (ties: metric, config order)."""
        f = self.score(C.SERVICE_DATA, C.PREF_LOAD_BALANCE)
        rest = sorted((u for u in range(self.n_uplinks) if self.usable[u] and self.weight[u] > 0),
                      key=lambda u: (self.metric[u], u))
        out = []
        while rest:
            out.append(self.argmax(f, rest))
            rest.remove(out[-1])
        return out

    def rotate(self) -> int:
        """Smooth weighted round-robin: add the weights, the largest wins and gives back the sum."""
        win, total = -1, 0.0
        for u in self.lb_order():
            self.wrr[u] += self.weight[u]
            total += self.weight[u]
            if win < 0 or self.wrr[u] > self.wrr[win]:
                win = u
        if win >= 0:
            self.wrr[win] -= total
        return win

    def balance(self, src, ts) -> int:
        if src is None or self.sticky is None:
            return self.rotate()
        key = np.zeros(1, C.ROW_DTYPE)
        key[0]["src"] = np.frombuffer(bytes(src), np.uint8)
        tsa = np.array([float(ts)])
        o = np.full(1, -1, np.int16)
        self.sticky.lookup(key, tsa, o)
        if 0 <= o[0] < self.n_uplinks and self.weight[o[0]] > 0:
            self.c["sticky"] += 1
            return int(o[0])
        u = self.rotate()
        if u >= 0 and o[0] < 0:
            self.sticky.insert(key, tsa, o, np.array([u], np.int16), np.zeros(1, np.uint8), np.zeros(1, np.uint16))
        return u

    def select_one(self, service: int, preference: int, src=None, ts: float = 0.0) -> int:
        if preference not in self.cfg.policies:
            self.c["undefined_preference"] += 1
        pol = self.cfg.policies.get(preference, self.cfg.policies[0])
        if pol.pin is not None:
            best = pol.pin if self.usable[pol.pin] else -1
        elif pol.number == C.PREF_LOAD_BALANCE:
            best = self.balance(src, ts)
        else:
            order = sorted((u for u in range(self.n_uplinks) if self.usable[u]),
                           key=lambda u: (self.metric[u], u))
            best = self.argmax(self.score(service, preference), order)
        if best < 0:
            self.c["no_uplink"] += 1
        else:
            self.c["selected"][best] += 1
        return best

    def select(self, service, pref, out, n=-1, rows=None, ts=None):
        if n < 0:
            n = len(service)
        for i in range(n):
            src = None if rows is None else bytes(rows[i]["src"])
            out[i] = self.select_one(int(service[i]), int(pref[i]), src, 0.0 if ts is None else float(ts[i]))

    def weights(self):
        return np.array(self.weight, np.float64)

    def rotation(self):
        return np.array(self.wrr, np.float64)

    def counters(self):
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.c.items()}
