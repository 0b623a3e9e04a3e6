"""Reference classifier: the oracle for engine._classify (same semantics, plain Python)."""
from __future__ import annotations

import ipaddress

from engine import constants as C

DSCP_SERVICE = {46: C.SERVICE_VOIP, 34: C.SERVICE_VIDEO, 36: C.SERVICE_VIDEO,
                38: C.SERVICE_VIDEO, 32: C.SERVICE_VIDEO, 40: C.SERVICE_VIDEO,
                48: C.SERVICE_CONTROL, 56: C.SERVICE_CONTROL}


class Classifier:
    def __init__(self, cfg):
        self.rules = list(cfg.rules)
        self.default_preference = cfg.default_preference
        self.c = {"tagged": 0, "untagged": 0, "reserved_service": 0, "dscp_derived": 0,
                  "icmp_control": 0, "untrusted_option": 0, "reserved_preference": 0}
        self.pins = set(cfg.pin_preferences()) if hasattr(cfg, "pin_preferences") else set()
        # [[trust]]: the longest prefix holding the source decides (equal lengths: file order)
        self.trust = sorted(getattr(cfg, "trust", []), key=lambda t: -t.src.prefixlen)
        self.hits = [0] * len(self.rules)

    @staticmethod
    def _match(rule, row) -> bool:
        if rule.proto is not None and rule.proto != row["proto"]:
            return False
        if rule.sport is not None and not rule.sport[0] <= row["sport"] <= rule.sport[1]:
            return False
        if rule.dport is not None and not rule.dport[0] <= row["dport"] <= rule.dport[1]:
            return False
        if rule.dscp is not None and rule.dscp != row["tclass"] >> 2:
            return False
        if rule.src is not None and ipaddress.IPv6Address(bytes(row["src"])) not in rule.src:
            return False
        if rule.dst is not None and ipaddress.IPv6Address(bytes(row["dst"])) not in rule.dst:
            return False
        return True

    def trusted(self, row, service: int, preference: int) -> bool:
        """May an option from this source ask for (service, preference)?"""
        src = ipaddress.IPv6Address(bytes(row["src"]))
        for t in self.trust:
            if src in t.src:
                return service in t.services and any(lo <= preference <= hi for lo, hi in t.preferences)
        return True

    def classify_row(self, row) -> tuple[int, int]:
        if row["has_opt"]:
            raw = int(row["service"])
            s = raw if raw <= 3 else C.SERVICE_DATA
            if not self.trusted(row, s, int(row["preference"])):
                self.c["untrusted_option"] += 1       # then as if it carried no option
            else:
                self.c["tagged"] += 1
                if raw > 3:
                    self.c["reserved_service"] += 1
                p = int(row["preference"])
                if p in self.pins:                     # a pin's preference is no option's to ask for
                    self.c["reserved_preference"] += 1
                    p = C.PREF_NONE
                for k, rule in enumerate(self.rules):  # a pin holds even against the option
                    if rule.pin and self._match(rule, row):
                        self.hits[k] += 1
                        return s, int(rule.preference)
                return s, p
        self.c["untagged"] += 1
        service = preference = None
        for k, rule in enumerate(self.rules):
            if self._match(rule, row):
                self.hits[k] += 1
                service, preference = rule.service, rule.preference
                break
        if service is None:
            ds = DSCP_SERVICE.get(int(row["tclass"]) >> 2)
            icmp = (row["proto"] == 58 and row["family"] == 6) or (row["proto"] == 1 and row["family"] == 4)
            if ds is not None:
                service = ds
                self.c["dscp_derived"] += 1
            elif icmp and row["flags"] & C.F_L4 and not row["flags"] & C.F_ECHO:
                service = C.SERVICE_CONTROL
                self.c["icmp_control"] += 1
            else:
                service = C.SERVICE_DATA
        if preference is None:
            preference = self.default_preference
        return service, preference

    def classify(self, rows, service_out, pref_out, n=-1):
        if n < 0:
            n = len(rows)
        for i in range(n):
            service_out[i], pref_out[i] = self.classify_row(rows[i])

    def counters(self):
        return dict(self.c, rule_hits=list(self.hits))
