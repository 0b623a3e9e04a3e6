"""Reference forwarding decisions: the oracle for engine._forward, one frame at a time.

The same tables as the compiled Forwarder, as plain Python values; the same pipeline built
from the reference stages; the same verdicts, rewritten bytes, virtio-net headers, counters
and punts.  pyx/forward.pyx's docstring is the specification.
"""
from __future__ import annotations

import numpy as np

from engine import constants as C
from engine.ref import edge as E
from engine.ref import nat as N
from engine.ref.pipeline import RefPipeline
from engine.ref.rewrite import NEEDS_CSUM, rewrite_frame

KERNEL, DROP = -2, -3
TIME_EXCEEDED, TOO_BIG, NEIGHBOUR, PARAM_PROBLEM = 1, 2, 3, 4


def _vnet(v) -> dict:
    return {k: int(v[k]) for k in ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")}


class RefForwarder:
    def __init__(self, cfg, router: bool, n_uplinks: int):
        self.router, self.n_up = router, n_uplinks
        self.pipe = RefPipeline(cfg)
        self.pipe.honour_unknown = router         # RFC 8200 4.2 as a router only
        self.param_problems = True                # answer opt_unknown_icmp (False: the kernel alone)
        self.in_mac = bytes(6)
        self.up_mac = [bytes(6)] * n_uplinks
        # per uplink: one MAC for both families, or (IPv4's, IPv6's) when they differ
        self.gw_mac: list = [bytes(6)] * n_uplinks
        self.up_mtu = [1500] * n_uplinks
        self.up_strip = [cfg.option_type if getattr(up, "strip_option", False) else 0
                         for up in cfg.uplinks[:n_uplinks]] + [0] * max(0, n_uplinks - len(cfg.uplinks))
        self.in_mtu = 1500
        self.local: set[bytes] = set()
        self.own: dict[bytes, int] = {}           # host mode: an interface's address -> its uplink
        self.lan_nets: list[tuple[bytes, bytes]] = []
        self.kernel_nets: list[tuple[bytes, bytes]] = []
        self.hosts: dict[bytes, bytes] = {}
        self.t_start, self.t_end = 0.0, float("inf")
        self.counters: dict[str, int] = {}
        self.punts: list[tuple[int, int]] = []        # (kind, frame index)
        self.nat, self.npt, self.nat_mode = None, None, [0] * n_uplinks
        self.edge, self.edge_mode = None, [0] * n_uplinks
        self.open_nets: list[tuple[bytes, bytes]] = []
        self.forwards: list[tuple[bytes, int, int, int, tuple]] = []
        self.nat6 = None
        self.napt_last = False            # the last _translate was NAPT44's or NAPT66's

    def set_forwards(self, forwards) -> None:
        self.forwards = [(bytes(a), p, lo, hi, tuple(ups)) for a, p, lo, hi, ups in forwards]

    def _forwarded(self, r, u: int) -> bool:
        return bool(r["flags"] & C.F_L4) and any(
            p == r["proto"] and lo <= r["dport"] <= hi and u in ups and a == bytes(r["dst"])
            for a, p, lo, hi, ups in self.forwards)

    def set_nat(self, nat, modes, npt, nat6=None) -> None:
        self.nat, self.nat_mode, self.npt, self.nat6 = nat, list(modes), npt, nat6

    def set_edge(self, edge, modes) -> None:
        self.edge, self.edge_mode = edge, list(modes)

    def set_routed_prefixes(self, nets) -> None:
        self.open_nets = [(bytes(v), bytes(m)) for v, m in nets]

    @staticmethod
    def _row(r) -> dict:
        return {k: (bytes(r[k]) if k in ("src", "dst") else int(r[k]))
                for k in ("src", "dst", "sport", "dport", "proto", "family", "l3_off", "l4_off", "flags", "icmp_type")}

    NAT_REASON = {N.UNKNOWN: "nat_unsolicited", N.EXHAUSTED: "nat_exhausted", N.NO_ADDRESS: "nat_no_address"}

    @staticmethod
    def _private4(a: bytes) -> bool:
        return (a[0] == 10 or (a[0] == 172 and 16 <= a[1] < 32) or (a[0] == 192 and a[1] == 168)
                or (a[0] == 100 and 64 <= a[1] < 128))

    def _translate(self, out_dir: bool, frame: bytes, l3: int, row, u: int, now: float, pending: bool):
        """(code, frame) after the uplink's source translation, out or in."""
        ip = bytearray(frame[l3:])
        code = N.PASS
        self.napt_last = False            # NAPT44 / NAPT66 translated it (they filter it themselves)
        if row["family"] == 4 and self.nat_mode[u] and self.nat is not None and (
                not out_dir or self.nat_mode[u] == 2 or self._private4(bytes(row["src"])[12:])):
            code = (self.nat.out_packet if out_dir else self.nat.in_packet)(ip, u, now, pending)
            self.napt_last = code == N.OK
        elif row["family"] == 6:
            if self.nat6 is not None:
                code = (self.nat6.out_packet if out_dir else self.nat6.in_packet)(ip, u, now, pending)
                self.napt_last = code == N.OK
            if code == N.PASS and self.npt is not None:
                code = (self.npt.out_packet if out_dir else self.npt.in_packet)(ip, u)
        return code, frame[:l3] + bytes(ip)

    def count(self, name: str, k: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + k

    @staticmethod
    def _not_routable(row) -> bool:
        dst, src = bytes(row["dst"]), bytes(row["src"])
        if row["family"] == 6:
            return (dst[0] == 0xFF or (dst[0] == 0xFE and dst[1] & 0xC0 == 0x80)
                    or (src[0] == 0xFE and src[1] & 0xC0 == 0x80) or src == bytes(16))
        return dst[12] >= 224

    @staticmethod
    def _param_problem_allowed(frame: bytes, row, mac: bytes) -> bool:
        """RFC 4443 2.4(e) for a frame dropped opt_unknown_icmp: to this machine at the link
        layer (mac, or 33:33:.. for a multicast destination), a source naming one node, not
        an ICMPv6 error or redirect."""
        dst, src = bytes(row["dst"]), bytes(row["src"])
        if row["family"] != 6:
            return False
        if dst[0] == 0xFF:
            if frame[:2] != b"\x33\x33":
                return False
        elif frame[:6] != mac:
            return False
        if src[0] == 0xFF or src == bytes(16):
            return False
        t = int(row["icmp_type"])
        return not (row["proto"] == 58 and row["flags"] & C.F_L4 and (t < 128 or t == 137))

    def _param_problems(self, frames, rows, out, ts, mac_of) -> None:
        """The parameter problems a router punts for the frames dropped opt_unknown_icmp."""
        if not self.router or not self.param_problems:
            return
        for i in range(len(frames)):
            if (out[i] == DROP and rows[i]["reason"] == C.REASON_OPT_UNKNOWN_ICMP
                    and self.t_start <= ts[i] < self.t_end
                    and self._param_problem_allowed(frames[i], rows[i], mac_of)):
                self.punts.append((PARAM_PROBLEM, i))

    @staticmethod
    def _in(addr: bytes, nets) -> bool:
        return any(bytes(a & b for a, b in zip(addr, mask)) == value for value, mask in nets)

    @staticmethod
    def _seg_len(frame: bytes, row, vnet: dict) -> int:
        l3, l4 = int(row["l3_off"]), int(row["l4_off"])
        if not vnet["gso_type"] or l4 == 0:
            return len(frame) - l3
        l4end = l4 + (frame[l4 + 12] >> 4) * 4 if row["proto"] == 6 and l4 + 13 <= len(frame) else l4 + 8
        return l4end - l3 + vnet["gso_size"]

    def _parse(self, frames):
        from engine.frames import pack_frames

        before = self.pipe.reasons.copy()
        rows, out = self.pipe.parse(*pack_frames(frames))
        for code, n in enumerate(self.pipe.reasons - before):
            if n:
                self.count(C.REASON_NAMES[code], int(n))
        return rows, out

    def _emit(self, out, rows, i, frame, v, src, dst, **how):
        """Rewrite one frame for its port; (frame, vnet) to send, or None (dropped)."""
        f, verdict, v = rewrite_frame(frame, rows[i], src, dst, v, **how)
        if verdict == 1:
            self._drop(out, rows, i, "hop_limit")
            self.punts.append((TIME_EXCEEDED, i))
            return None
        if verdict == 2:
            self._drop(out, rows, i, "bad_offload")
            return None
        return f, v

    def _drop(self, out, rows, i, reason: str) -> None:
        out[i] = DROP
        rows[i]["reason"] = C.REASON_CODE[reason]
        self.count(reason)

    def outbound(self, frames, vnets, ts):
        """inside -> uplinks: (out, [(frame, vnet) as sent or None], rows)."""
        n = len(frames)
        rows, out = self._parse(frames)
        self._param_problems(frames, rows, out, ts, self.in_mac)
        for i in range(n):
            if out[i] != -1 or not self.router:
                continue
            if ts[i] < self.t_start or ts[i] >= self.t_end:
                out[i] = KERNEL
                self.count("handover")
            elif (frames[i][:6] != self.in_mac or self._not_routable(rows[i])
                  or bytes(rows[i]["dst"]) in self.local or self._in(bytes(rows[i]["dst"]), self.kernel_nets)):
                out[i] = KERNEL
        before = int(self.pipe.reasons[C.REASON_NO_UPLINK])
        self.pipe.route(rows, out, ts)
        self.count("no_uplink", int(self.pipe.reasons[C.REASON_NO_UPLINK]) - before)
        sent = [None] * n
        for i in range(n):
            u = int(out[i])
            if u < 0:
                if u == KERNEL:
                    self.count("kernel")
                continue
            own = not self.router and bytes(rows[i]["src"]) in self.own
            if own:                                   # the host's own packet: its interface, as it is
                u = out[i] = self.own[bytes(rows[i]["src"])]
            v = _vnet(vnets[i])
            gw = self.gw_mac[u]
            if not isinstance(gw, bytes):
                gw = gw[1 if int(rows[i]["family"]) == 6 else 0]
            if gw == bytes(6):
                self._drop(out, rows, i, "no_neighbour")
                continue
            if self._seg_len(frames[i], rows[i], v) > self.up_mtu[u]:
                self._drop(out, rows, i, "oversize")
                if self.router:
                    self.punts.append((TOO_BIG, i))
                continue
            if v["flags"] & NEEDS_CSUM:
                self.count("csum_finished" if not v["gso_type"] else "super_frames")
            r = rows[i]
            l4 = int(r["l4_off"])
            tcp_flags = frames[i][l4 + 13] if r["proto"] == 6 and r["flags"] & C.F_L4 and l4 + 14 <= len(frames[i]) else 0
            sent[i] = self._emit(out, rows, i, frames[i], v, self.up_mac[u], gw, hop=self.router,
                                 strip=self.up_strip[u])
            if sent[i] is not None and not own:
                f, v = sent[i]
                code, f = self._translate(True, f, 14, rows[i], u, ts[i], bool(v["flags"] & NEEDS_CSUM))
                if code not in (N.OK, N.PASS):
                    self._drop(out, rows, i, self.NAT_REASON.get(code, "nat_untranslatable"))
                    sent[i] = None
                    continue
                napt = self.napt_last
                if (self.edge is not None and self.edge_mode[u] and not napt
                        and self.edge.outbound(self._row(r), tcp_flags, ts[i]) == E.FULL):
                    self._drop(out, rows, i, "edge_full")
                    sent[i] = None
                    continue
                sent[i] = (f, v)
        return out, sent, rows

    def inbound(self, u: int, frames, vnets, ts):
        """uplink u -> inside: (out, [(frame, vnet) or None], rows); out 0 = to the inside."""
        n = len(frames)
        rows, out = self._parse(frames)
        self._param_problems(frames, rows, out, ts, self.up_mac[u])
        sent = [None] * n
        for i in range(n):
            if out[i] != -1:
                if out[i] == KERNEL:
                    self.count("kernel")
                continue
            r, f = rows[i], frames[i]
            if ts[i] < self.t_start or ts[i] >= self.t_end:
                out[i] = KERNEL
                self.count("handover")
                continue
            napt = False
            if f[:6] == self.up_mac[u]:          # host mode too: replies to the VI's mappings
                l3 = int(r["l3_off"])
                code, f2 = self._translate(False, f, l3, r, u, ts[i], bool(vnets[i]["flags"] & NEEDS_CSUM))
                if code not in (N.OK, N.PASS):
                    self._drop(out, rows, i, self.NAT_REASON.get(code, "nat_untranslatable"))
                    continue
                if code == N.OK:
                    f = f2
                    napt = self.napt_last
                    new = bytes(r["dst"])[:12] + f[l3 + 16:l3 + 20] if r["family"] == 4 else f[l3 + 24:l3 + 40]
                    r["dst"] = np.frombuffer(new, np.uint8)
            dst = bytes(r["dst"])
            if self._not_routable(r):
                inside = False
            elif self.router:
                inside = f[:6] == self.up_mac[u] and dst not in self.local and self._in(dst, self.lan_nets)
            else:
                inside = dst in self.local
            if not inside:
                out[i] = KERNEL
                self.count("kernel")
                continue
            if (self.router and self.edge is not None and self.edge_mode[u] and not napt
                    and not self._in(dst, self.open_nets)
                    and self.edge.inbound(self._row(r), f, ts[i]) != E.OK and not self._forwarded(r, u)):
                self._drop(out, rows, i, "edge_unsolicited")
                continue
            v = _vnet(vnets[i])
            host = bytes(6)
            if self.router:
                if dst not in self.hosts:
                    self._drop(out, rows, i, "no_neighbour")
                    self.punts.append((NEIGHBOUR, i))
                    continue
                host = self.hosts[dst]
            if self._seg_len(f, r, v) > self.in_mtu:
                self._drop(out, rows, i, "oversize")
                if self.router:
                    self.punts.append((TOO_BIG, i))
                continue
            if v["flags"] & NEEDS_CSUM:
                self.count("csum_finished" if not v["gso_type"] or not self.router else "super_frames")
            sent[i] = self._emit(out, rows, i, f, v, self.in_mac, host, hop=self.router, gso_too=not self.router,
                                 macs=self.router)
            if sent[i] is not None:
                out[i] = 0
        return out, sent, rows
