"""Reference stateful edge: the oracle for engine._edge (pyx/edge.pyx's docstring is the
specification), a dict of flows instead of the keyed open-addressing table.

Rows are engine.ref.parse.parse_frame dicts; addresses in the row form (IPv4-mapped).
"""
from __future__ import annotations

from engine import constants as C

OK, UNSOLICITED, FULL = 0, 1, 2
TIMEOUTS = {"tcp_syn": 120.0, "tcp_established": 432000.0, "tcp_fin": 120.0, "tcp_rst": 10.0,
            "udp": 30.0, "udp_replied": 120.0, "icmp": 30.0, "other": 600.0}
NEW, EST, FIN, RST = 0, 1, 2, 3
PORTED = (6, 17, 132, 136, 33)


def _icmp(proto: int, family: int) -> bool:
    return (proto, family) in ((58, 6), (1, 4))


def _key(lan: bytes, rem: bytes, lport: int, rport: int, proto: int) -> bytes:
    return bytes(lan) + bytes(rem) + lport.to_bytes(2, "big") + rport.to_bytes(2, "big") + bytes([proto, 0, 0, 0])


class RefEdge:
    def __init__(self, capacity: int = 65536, timeouts=None):
        self.capacity = capacity
        self.t = dict(TIMEOUTS, **(timeouts or {}))
        self.flows: dict[bytes, list] = {}          # key -> [state, last]
        self.full = 0

    def __len__(self) -> int:
        return len(self.flows)

    def timeout(self, key: bytes, state: int) -> float:
        proto = key[36]
        if proto == 6:
            return {EST: self.t["tcp_established"], FIN: self.t["tcp_fin"], RST: self.t["tcp_rst"]}.get(
                state, self.t["tcp_syn"])
        if proto == 17:
            return self.t["udp_replied"] if state == EST else self.t["udp"]
        if proto in (1, 58):
            return self.t["icmp"]
        return self.t["other"]

    def expire(self, now: float) -> int:
        gone = [k for k, (st, last) in self.flows.items() if now - last > self.timeout(k, st)]
        for k in gone:
            del self.flows[k]
        return len(gone)

    def outbound(self, row: dict, tcp_flags: int, now: float) -> int:
        proto, fam = row["proto"], row["family"]
        lport = rport = 0
        if _icmp(proto, fam):
            if not row["flags"] & C.F_ECHO or row["icmp_type"] != (128 if fam == 6 else 8):
                return OK
            lport = row["sport"]
        elif proto in PORTED:
            if not row["flags"] & C.F_L4:
                return OK
            lport, rport = row["sport"], row["dport"]
        k = _key(row["src"], row["dst"], lport, rport, proto)
        e = self.flows.get(k)
        if e is None:
            if len(self.flows) >= self.capacity:
                self.full += 1
                return FULL
            st = NEW
            if proto == 6:
                st = RST if tcp_flags & 0x04 else FIN if tcp_flags & 0x01 else NEW
            self.flows[k] = [st, now]
            return OK
        e[1] = now
        if proto == 6:
            if tcp_flags & 0x04:
                e[0] = RST
            elif tcp_flags & 0x01:
                e[0] = FIN
            elif tcp_flags & 0x12 == 0x02 and e[0] >= FIN:
                e[0] = NEW
        return OK

    def inbound(self, row: dict, frame: bytes, now: float) -> int:
        proto, fam, t = row["proto"], row["family"], row["icmp_type"]
        lport = rport = 0
        if _icmp(proto, fam):
            if not row["flags"] & C.F_L4:
                return OK
            if fam == 6:
                if 1 <= t <= 4:
                    return self.quoted(row, frame)
                if t == 128:
                    return OK
                if t != 129:
                    return UNSOLICITED
            else:
                if t in (3, 11, 12):
                    return self.quoted(row, frame)
                if t != 0:
                    return UNSOLICITED
            if not row["flags"] & C.F_ECHO:
                return UNSOLICITED
            lport = row["sport"]
        elif proto in PORTED:
            if not row["flags"] & C.F_L4:
                return OK
            lport, rport = row["dport"], row["sport"]
        e = self.flows.get(_key(row["dst"], row["src"], lport, rport, proto))
        if e is None:
            return UNSOLICITED
        e[1] = now
        l4 = row["l4_off"]
        tf = frame[l4 + 13] if proto == 6 and len(frame) >= l4 + 14 else 0
        if proto == 6 and tf & 0x04:
            e[0] = RST
        elif proto == 6 and tf & 0x01:
            e[0] = FIN
        elif e[0] == NEW:
            e[0] = EST
        return OK

    def quoted(self, row: dict, frame: bytes) -> int:
        """An ICMP error to a LAN host passes when it quotes a packet of one of that host's flows."""
        q = row["l4_off"] + 8
        fam = row["family"]
        if fam == 6:
            if len(frame) < q + 40 or frame[q] >> 4 != 6:
                return UNSOLICITED
            src, dst, proto, off = frame[q + 8:q + 24], frame[q + 24:q + 40], frame[q + 6], q + 40
            n = 0
            while proto in (0, 43, 60, 44, 51):
                n += 1
                if n > 8 or len(frame) < off + 8:
                    return UNSOLICITED
                if proto == 44:
                    if int.from_bytes(frame[off + 2:off + 4], "big") & 0xFFF8:
                        return UNSOLICITED
                    hl = 8
                elif proto == 51:
                    hl = (frame[off + 1] + 2) * 4
                else:
                    hl = (frame[off + 1] + 1) * 8
                proto = frame[off]
                off += hl
        else:
            if len(frame) < q + 20 or frame[q] >> 4 != 4 or frame[q] & 0x0F < 5:
                return UNSOLICITED
            pre = bytes(10) + b"\xff\xff"
            src, dst, proto = pre + frame[q + 12:q + 16], pre + frame[q + 16:q + 20], frame[q + 9]
            if int.from_bytes(frame[q + 6:q + 8], "big") & 0x1FFF:
                return UNSOLICITED
            off = q + (frame[q] & 0x0F) * 4
        if bytes(src) != bytes(row["dst"]):
            return UNSOLICITED
        lport = rport = 0
        if _icmp(proto, fam):
            if len(frame) < off + 8 or frame[off] != (128 if fam == 6 else 8):
                return UNSOLICITED
            lport = int.from_bytes(frame[off + 4:off + 6], "big")
        elif proto in PORTED:
            if len(frame) < off + 4:
                return UNSOLICITED
            lport, rport = int.from_bytes(frame[off:off + 2], "big"), int.from_bytes(frame[off + 2:off + 4], "big")
        return OK if _key(src, dst, lport, rport, proto) in self.flows else UNSOLICITED

    def entries(self):
        return sorted((k, st, last) for k, (st, last) in self.flows.items())
