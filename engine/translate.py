"""Source translation per uplink (issue 11): the compiled translators of pyx/nat.pyx kept
current by the control side.

    [[uplink]] nat = "auto" | "masquerade" | "none"   (IPv4 NAPT to the uplink's address)
               nat6 = "npt" | "none", npt_prefix       (RFC 6296: the LAN prefix <-> npt_prefix)
    [engine] nat_ports = "auto" | "LO-HI"              (the ports mappings take)

The forwarder (pyx/forward.pyx) translates in its loop; this module builds the translators,
gives them each uplink's IPv4 address and follows it over netlink (a new address drops the
old mappings: they were made for it), gives NPTv6 the LAN prefix of npt_prefix's length
(learned LAN prefixes included), expires idle mappings, reports them, and names what the
kernel must not see: replies to mappings' ports on the uplinks' addresses (its stack would
answer them with a TCP reset or a port unreachable) and packets to the NPT prefixes (it has
no route for them).  "auto" ports are 1024-65535 without the kernel's own
ip_local_port_range, so the router's own connections on an uplink address and the mappings
never share a port.
"""
from __future__ import annotations

import ipaddress
import time

from engine.config import NAT_MODES, to_mapped

KERNEL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
ULA = ipaddress.ip_network("fc00::/7")
PRIVATE4 = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")]


def kernel_port_range(path: str = KERNEL_RANGE) -> tuple[int, int] | None:
    try:
        lo, hi = (int(x) for x in open(path).read().split())
        return (lo, hi) if 1 <= lo <= hi <= 65535 else None
    except (OSError, ValueError):
        return None


def port_ranges(ports) -> list[tuple[int, int]]:
    """The ranges of a sorted port array (for the kernel guard's rule)."""
    out: list[list[int]] = []
    for p in (int(x) for x in ports):
        if out and p == out[-1][1] + 1:
            out[-1][1] = p
        else:
            out.append([p, p])
    return [(a, b) for a, b in out]


class Translation:
    def __init__(self, cfg, fw, router: bool, log):
        from engine._nat import Npt66, Nat44, port_list

        self.cfg, self.fw, self.log = cfg, fw, log
        n = len(cfg.uplinks)
        self.modes = [NAT_MODES[u.nat] if router else 0 for u in cfg.uplinks]
        self.nat = self.npt = None
        self.ports = None
        if any(self.modes):
            if cfg.nat_ports is None:
                avoid = kernel_port_range()
                self.ports = port_list((1024, 65535), avoid)
                self.nat = Nat44(n, max(1024, min(cfg.flow_capacity, 1 << 22)), avoid=avoid)
            else:
                self.ports = port_list(cfg.nat_ports)
                k = kernel_port_range()
                if k and cfg.nat_ports[0] <= k[1] and k[0] <= cfg.nat_ports[1]:
                    log.warning(f"nat_ports {cfg.nat_ports[0]}-{cfg.nat_ports[1]} overlaps the kernel's "
                                f"ip_local_port_range {k[0]}-{k[1]}: the router's own connections on a "
                                f"translating uplink's address may lose their replies to mappings")
                self.nat = Nat44(n, max(1024, min(cfg.flow_capacity, 1 << 22)), port_range=cfg.nat_ports)
        if router and any(u.nat6 == "npt" for u in cfg.uplinks):
            self.npt = Npt66(n)
        self.addrs: list = [None] * n
        self.active = [0] * n                    # modes in effect (auto: only with a private LAN)
        # [[forward]] to an IPv4 host the uplink translates: its ports go to that host (out
        # of the mappings' pool; the guard keeps the kernel from them)
        self.forward_ports: dict[int, list] = {6: [], 17: []}
        if self.nat is not None:
            for f in cfg.forwards:
                if f.to.version != 4:
                    continue
                private = any(f.to in net for net in PRIVATE4)
                for u in f.uplinks:
                    if self.modes[u] == 2 or (self.modes[u] == 1 and private):
                        self.nat.set_forward(u, f.proto, f.ports[0], f.ports[1], f.to.packed)
                        self.forward_ports[f.proto].append(f.ports)
        self.npt_maps: list = [None] * n
        fw.set_nat(self.nat, self.active, self.npt)

    def refresh(self, state, up_index: list, lan_prefixes: list) -> bool:
        """Each translating uplink's IPv4 address from the kernel's state, NPT's prefix pairs
        from the LAN prefixes; True when something changed (the guard's sets follow).  An
        uplink whose nat is "auto" translates only while the LAN has private IPv4 space
        (RFC 1918, 100.64/10): a routed LAN (the draft's testbed) keeps its addresses, and
        the uplink's address keeps every port for the router's own services."""
        changed = False
        private = any(p.version == 4 and any(p.subnet_of(q) for q in PRIVATE4) for p in lan_prefixes)
        active = [m if m == 2 or (m == 1 and private) else 0 for m in self.modes]
        if active != self.active:
            self.active = active
            self.fw.set_nat(self.nat, active, self.npt)
            changed = True
        for u, up in enumerate(self.cfg.uplinks):
            if self.nat is not None:
                idx = up_index[u]
                v4 = [a for a in (state.addresses(idx) if idx is not None and active[u] else [])
                      if a.version == 4 and not a.is_link_local]
                addr = v4[0] if v4 else None
                if addr != self.addrs[u]:
                    gone = self.nat.flush_uplink(u) if self.addrs[u] is not None else 0
                    self.nat.set_address(u, addr)
                    self.addrs[u] = addr
                    changed = True
                    if addr is None and active[u]:
                        self.log.warning(f"uplink {up.name} ({up.device}) has no IPv4 address: its translated "
                                         f"flows are dropped (nat_no_address) until it has one")
                    elif addr is not None:
                        self.log(f"uplink {up.name} translates IPv4 to {addr}"
                                 + (f" (the old address's {gone} mappings are gone)" if gone else ""))
            if self.npt is not None and up.nat6 == "npt":
                # the LAN prefix of npt_prefix's length; unique local ones first (RFC 6296's case)
                lans = sorted((p for p in lan_prefixes if p.version == 6 and p.prefixlen == up.npt_prefix.prefixlen),
                              key=lambda p: (not p.subnet_of(ULA), p))
                pair = (lans[0], up.npt_prefix) if lans else None
                if pair != self.npt_maps[u]:
                    self.npt.set_prefixes(u, *(pair or (None, None)))
                    self.npt_maps[u] = pair
                    changed = True
                    if pair is None:
                        self.log.warning(f"uplink {up.name}: no IPv6 LAN prefix is a /{up.npt_prefix.prefixlen} like "
                                         f"npt_prefix {up.npt_prefix}; IPv6 leaves it untranslated")
                    else:
                        self.log(f"uplink {up.name} maps {pair[0]} to {pair[1]} (NPTv6)")
        return changed

    def expire(self, now: float | None = None) -> int:
        return self.nat.expire(time.time() if now is None else now) if self.nat is not None else 0

    def guard_sets(self) -> dict:
        return {"nat4": ("ipv4_addr", [str(a) for a in self.addrs if a is not None]),
                "npt6": ("ipv6_addr", [str(m[1]) for m in self.npt_maps if m is not None])}

    def guard_rules(self, uplinks: list[str]) -> list[str]:
        """Rules for the kernel guard, before its 'the router itself' rule."""
        ups = ", ".join(f'"{d}"' for d in uplinks)
        rules = []
        if self.ports is not None:
            ranges = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in port_ranges(self.ports))
            rules.append(f"iifname {{ {ups} }} ip daddr @nat4 meta l4proto {{ tcp, udp }} th dport {{ {ranges} }} "
                         f"counter drop")
        for proto, name in ((6, "tcp"), (17, "udp")):
            if self.forward_ports[proto]:
                ranges = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in sorted(set(self.forward_ports[proto])))
                rules.append(f"iifname {{ {ups} }} ip daddr @nat4 {name} dport {{ {ranges} }} counter drop")
        rules.append(f"iifname {{ {ups} }} ip6 daddr @npt6 counter drop")
        return rules

    def status(self) -> dict:
        names = [u.name for u in self.cfg.uplinks]
        out = {"uplinks": {}}
        if self.nat is not None:
            st = self.nat.stats()
            out.update(mappings=st["mappings"], capacity=st["capacity"], ports=st["ports"],
                       exhausted=st["exhausted"], moved=st["moved"])
        for u, name in enumerate(names):
            t = {"nat": self.cfg.uplinks[u].nat, "nat6": self.cfg.uplinks[u].nat6}
            t["translating"] = bool(self.active[u])
            if self.nat is not None and self.active[u]:
                t["address"] = None if self.addrs[u] is None else str(self.addrs[u])
                t["mappings"] = st["uplinks"][u]
            if self.npt_maps[u] is not None:
                t["npt"] = f"{self.npt_maps[u][0]} <-> {self.npt_maps[u][1]}"
            out["uplinks"][name] = t
        return out

    @staticmethod
    def bytes_per_mapping() -> int:
        from engine._nat import Nat44

        return Nat44(1, 1024).bytes_per_mapping



def make_edge(cfg, fw, router: bool):
    """The stateful edge (pyx/edge.pyx) for the uplinks whose edge is "stateful", and the
    routed prefixes open to unsolicited inbound; None when no uplink has one (or in host
    mode, where the VI's own stack is the endpoint)."""
    from engine._edge import Edge

    modes = [int(router and u.edge == "stateful") for u in cfg.uplinks]
    edge = Edge(cfg.edge_capacity) if any(modes) else None
    fw.set_edge(edge, modes)
    fw.set_routed_prefixes([(n.network_address.packed, n.netmask.packed)
                            for n in map(to_mapped, cfg.routed_prefixes)])
    fw.set_forwards([(to_mapped(ipaddress.ip_network(f.to)).network_address.packed, f.proto, f.ports[0],
                      f.ports[1], f.uplinks) for f in cfg.forwards])
    return edge


def edge_status(cfg, edge) -> dict:
    names = [u.name for u in cfg.uplinks]
    out = {"uplinks": {u.name: u.edge for u in cfg.uplinks},
           "routed_prefixes": [str(n) for n in cfg.routed_prefixes],
           "forwards": [{"proto": {6: "tcp", 17: "udp"}[f.proto], "port": f"{f.ports[0]}-{f.ports[1]}",
                         "to": str(f.to), "uplinks": [names[u] for u in f.uplinks]} for f in cfg.forwards]}
    if edge is not None:
        out.update(edge.stats())
    return out
