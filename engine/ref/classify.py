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
                  "icmp_control": 0}
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

    def classify_row(self, row) -> tuple[int, int]:
        if row["has_opt"]:
            self.c["tagged"] += 1
            s = int(row["service"])
            if s > 3:
                self.c["reserved_service"] += 1
                s = C.SERVICE_DATA
            for k, rule in enumerate(self.rules):      # a pin holds even against the option
                if rule.pin and self._match(rule, row):
                    self.hits[k] += 1
                    return s, int(rule.preference)
            return s, int(row["preference"])
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
