"""Reference flowbase: the dict model the compiled table is tested against.

An OrderedDict keyed by (src, dst, proto, sport, dport); its order is the LRU order (least
recently used first): a hit moves the flow to the end, eviction pops the front.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

FLOW_DTYPE = np.dtype([
    ("src", "u1", (16,)), ("dst", "u1", (16,)), ("proto", "u1"), ("sport", "<u2"),
    ("dport", "<u2"), ("uplink", "u1"), ("service", "u1"), ("preference", "<u2"),
    ("first_seen", "<f8"), ("last_seen", "<f8"), ("packets", "<u8"), ("bytes", "<u8"),
])


def row_key(row):
    return (bytes(row["src"]), bytes(row["dst"]), int(row["proto"]), int(row["sport"]),
            int(row["dport"]))


class FlowTable:
    def __init__(self, capacity, seed=None, idle_timeout=float("inf")):
        self.capacity = int(capacity)
        self.idle_timeout = float(idle_timeout)
        self.d: OrderedDict = OrderedDict()
        self.c = dict(created=0, expired=0, evicted=0, removed=0, rebound=0, lookups=0, hits=0,
                      misses=0)
        self.created_up = {}
        self.exporting = False
        self.exported = []

    def __len__(self):
        return len(self.d)

    def _hit(self, k, i, rows, ts, out):
        f = self.d[k]
        out[i] = f["uplink"]
        f["last_seen"] = float(ts[i])
        f["packets"] += 1
        f["bytes"] += int(rows[i]["length"])
        self.d.move_to_end(k)

    def lookup(self, rows, ts, out, n=-1):
        n = len(rows) if n < 0 else n
        misses = 0
        for i in range(n):
            if out[i] != -1:
                continue
            self.c["lookups"] += 1
            k = row_key(rows[i])
            self._lazy_expire(k, ts[i])
            if k in self.d:
                self.c["hits"] += 1
                self._hit(k, i, rows, ts, out)
            else:
                self.c["misses"] += 1
                misses += 1
        return misses

    def _lazy_expire(self, k, t):
        if k in self.d and float(t) - self.d[k]["last_seen"] > self.idle_timeout:
            self._delete(k)
            self.c["expired"] += 1

    def _delete(self, k):
        f = self.d.pop(k)
        if self.exporting:
            self.exported.append((k, dict(f)))

    def insert(self, rows, ts, out, choice, service, preference, n=-1):
        n = len(rows) if n < 0 else n
        made = 0
        for i in range(n):
            if out[i] != -1:
                continue
            k = row_key(rows[i])
            self._lazy_expire(k, ts[i])
            if k in self.d:
                self._hit(k, i, rows, ts, out)
                continue
            if choice[i] < 0:
                continue
            if len(self.d) >= self.capacity:
                self.c["evicted"] += 1
                self._delete(next(iter(self.d)))
            self.d[k] = dict(uplink=int(choice[i]), service=int(service[i]),
                             preference=int(preference[i]), first_seen=float(ts[i]),
                             last_seen=float(ts[i]), packets=1, bytes=int(rows[i]["length"]))
            self.c["created"] += 1
            self.created_up[int(choice[i])] = self.created_up.get(int(choice[i]), 0) + 1
            out[i] = choice[i]
            made += 1
        return made

    def expire(self, now, idle_timeout):
        k = 0
        while self.d:
            key = next(iter(self.d))
            if now - self.d[key]["last_seen"] > idle_timeout:
                self._delete(key)
                k += 1
            else:
                break
        self.c["expired"] += k
        return k

    def rebind(self, uplink_from, uplink_to):
        k = 0
        for key in list(self.d):
            f = self.d[key]
            if f["uplink"] != uplink_from:
                continue
            k += 1
            if isinstance(uplink_to, (int, np.integer)):
                dest = int(uplink_to)
            else:
                dest = int(uplink_to[f["preference"], f["service"] if f["service"] < 4 else 0])
            if dest < 0:
                self.c["removed"] += 1
                self._delete(key)
            else:
                f["uplink"] = dest
        self.c["rebound"] += k
        return k

    def remove(self, rows, n=-1):
        n = len(rows) if n < 0 else n
        k = 0
        for i in range(n):
            key = row_key(rows[i])
            if key in self.d:
                self._delete(key)
                self.c["removed"] += 1
                k += 1
        return k

    @staticmethod
    def _to_array(items):
        out = np.zeros(len(items), dtype=FLOW_DTYPE)
        for i, (k, f) in enumerate(items):
            out[i]["src"] = np.frombuffer(k[0], np.uint8)
            out[i]["dst"] = np.frombuffer(k[1], np.uint8)
            out[i]["proto"], out[i]["sport"], out[i]["dport"] = k[2], k[3], k[4]
            for name in ("uplink", "service", "preference", "first_seen", "last_seen", "packets", "bytes"):
                out[i][name] = f[name]
        return out

    def dump(self):
        return self._to_array(list(reversed(self.d.items())))

    def set_export(self, on):
        self.exporting = bool(on)

    def drain_export(self):
        out = self._to_array(self.exported)
        self.exported = []
        return out

    def uplink_counts(self, n_uplinks):
        out = np.zeros(n_uplinks, np.int64)
        for f in self.d.values():
            if f["uplink"] < n_uplinks:
                out[f["uplink"]] += 1
        return out

    def created_per_uplink(self, n_uplinks):
        return np.array([self.created_up.get(u, 0) for u in range(n_uplinks)], np.int64)

    def stats(self):
        return dict(self.c, size=len(self.d), capacity=self.capacity)
