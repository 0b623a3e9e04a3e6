"""Reference selector: the oracle for engine._select; scores every flow directly."""
from __future__ import annotations

from engine import constants as C
from engine.config import characteristics_matrix

TIE = 1e-9


class Selector:
    def __init__(self, cfg):
        self.cfg = cfg
        self.n_uplinks = len(cfg.uplinks)
        self.chars = characteristics_matrix(cfg).tolist()
        self.usable = [bool(u.usable) for u in cfg.uplinks]
        self.metric = [float(u.metric) for u in cfg.uplinks]
        self.c = {"selected": [0] * self.n_uplinks, "undefined_preference": 0, "no_uplink": 0}

    def update(self, chars, usable, metric=None):
        self.chars = [list(map(float, row)) for row in chars]
        self.usable = [bool(x) for x in usable]
        if metric is not None:
            self.metric = [float(x) for x in metric]

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

    def select_one(self, service: int, preference: int) -> int:
        if preference not in self.cfg.policies:
            self.c["undefined_preference"] += 1
        pin = self.cfg.policies.get(preference, self.cfg.policies[0]).pin
        if pin is not None:
            best = pin if self.usable[pin] else -1
            if best < 0:
                self.c["no_uplink"] += 1
            else:
                self.c["selected"][best] += 1
            return best
        f = self.score(service, preference)
        order = sorted((u for u in range(self.n_uplinks) if self.usable[u]),
                       key=lambda u: (self.metric[u], u))
        best = -1
        for u in order:
            if best < 0 or f[u] > f[best] + TIE:
                best = u
        if best < 0:
            self.c["no_uplink"] += 1
        else:
            self.c["selected"][best] += 1
        return best

    def select(self, service, pref, out, n=-1):
        if n < 0:
            n = len(service)
        for i in range(n):
            out[i] = self.select_one(int(service[i]), int(pref[i]))

    def counters(self):
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.c.items()}
