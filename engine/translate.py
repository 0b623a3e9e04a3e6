"""Source translation per uplink (issue 11): the compiled translators of pyx/nat.pyx kept
current by the control side.

    [[uplink]] nat = "auto" | "masquerade" | "none"   (IPv4 NAPT to the uplink's address)
               nat6 = "npt" | "none", npt_prefix       (RFC 6296: the LAN prefix <-> npt_prefix,
                                                        "auto": the uplink's own on-link prefix)
               nat6 = "masquerade"                     (NAPT66 to the uplink's IPv6 address)
    [engine] nat_ports = "auto" | "LO-HI"              (the ports mappings take)

The forwarder (pyx/forward.pyx) translates in its loop; this module builds the translators,
gives them each uplink's IPv4 address and follows it over netlink (a new address drops the
old mappings: they were made for it), gives NPTv6 the LAN prefix of npt_prefix's length
(learned LAN prefixes included) and, with npt_prefix "auto", the uplink's own prefix of the
LAN prefix's length, followed over netlink like the IPv4 address (none yet: LAN IPv6 through
it is held, dropped as nat_no_address), with the addresses in use on the link kept clear of
(the proxy that answers neighbour solicitations for the translations: engine/ndproxy.py),
gives NAPT66 each masquerading uplink's stable global IPv6 address (not a temporary or
deprecated one while another is there), followed like the IPv4 one, expires idle mappings, reports them, and names what the
kernel must not see: replies to mappings' ports on the uplinks' addresses (its stack would
answer them with a TCP reset or a port unreachable) and packets to the NPT prefixes (it has
no route for them).  "auto" ports are 1024-65535 without the kernel's own
ip_local_port_range, so the router's own connections on an uplink address and the mappings
never share a port.

Host mode (``mmr host``) uses the same NAPT44 with the VI as its LAN: "auto" there means
"masquerade" (every IPv4 packet from vi0 leaves with the interface's own address), so the
host works on networks that route nothing to vi0's prefix; the host's own sockets on an
interface's address keep their ports (the kernel's range) and the kernel never sees the
replies to mappings.  IPv6 from the VI is translated with NAPT66 where an interface says
nat6 = "masquerade" (the default, "none", sends the VI's IPv6 address as it is).
"""
from __future__ import annotations

import ipaddress
import time

from engine.config import NAT_MODES, PRIVATE4, to_mapped

NPT_AVOID = 16                     # addresses NPT keeps clear of per uplink (pyx/engine/_nat.pxd)

KERNEL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
ULA = ipaddress.ip_network("fc00::/7")
LINGER_S = 2.0            # a gone address's mappings stay this long for the flows moved away


def own_prefix(state, idx, length: int):
    """(the uplink's own prefix of length, None) or (None, why): the /length around one of
    its global IPv6 addresses whose on-link prefix (the address's own, or for a longer one
    such as DHCPv6's /128 an on-link route's around it) is that long or shorter (a global one
    before a unique local one, then the lowest: a deterministic choice while a renumbered
    uplink has both)."""
    from engine import _kernel as K

    nets = []
    if idx is not None:
        # the on-link prefixes the device has routes for (an RA's, without autoconfiguration)
        onlink = [ipaddress.IPv6Network((dst, plen)) for dst, plen, table, oifs, gw, _ in state.routes
                  if len(dst) == 16 and 0 < plen <= length and table == K.RT_TABLE_MAIN
                  and oifs == (idx,) and not gw]
        for a, (plen, _) in state.addrs.get(idx, {}).items():
            if len(a) != 16:
                continue
            ip = ipaddress.IPv6Address(a)
            if ip.is_link_local or ip.is_multicast or ip.is_loopback:
                continue
            if plen > length:        # a DHCPv6 /128: the on-link route around it, if any
                plen = min([n.prefixlen for n in onlink if ip in n] or [plen])
            nets.append((plen, ip))
    if not nets:
        return None, "it has no global IPv6 address (npt_prefix \"auto\" maps onto its own prefix)"
    fit = sorted((ip in ULA, ip, plen) for plen, ip in nets if plen <= length)
    if not fit:
        plen = min(p for p, _ in nets)
        return None, (f"its IPv6 prefixes are /{plen} or longer, and npt_prefix \"auto\" needs one of the LAN "
                      f"prefix's /{length} or shorter to map it onto (set npt_prefix to a prefix the ISP routes "
                      f"to it)")
    return ipaddress.IPv6Network((fit[0][1], length), strict=False), None


def in_use(state, idx, outer, gateways: list) -> tuple:
    """The addresses in outer that are in use on the uplink's link, which no LAN host may be
    translated onto: the router's own there first, the gateway's, the neighbours' the kernel
    knows on the device (not its own MAC's: a translation the kernel resolved)."""
    own, others = [], []
    if idx is None:
        return ()
    link = state.links.get(idx)
    mac = link.mac if link is not None else b""
    for a in state.addrs.get(idx, {}):
        if len(a) == 16 and ipaddress.IPv6Address(a) in outer:
            own.append(ipaddress.IPv6Address(a))
    for gw in gateways:
        if len(gw) == 16 and ipaddress.IPv6Address(gw) in outer:
            others.append(ipaddress.IPv6Address(gw))
    for (i, a), m in state.neigh.items():
        if i == idx and len(a) == 16 and m != mac and ipaddress.IPv6Address(a) in outer:
            others.append(ipaddress.IPv6Address(a))
    seen = set(own)
    return tuple(sorted(own)) + tuple(sorted(a for a in set(others) if a not in seen))


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
        from engine._nat import Npt66, Nat44, Nat66, port_list

        self.cfg, self.fw, self.log = cfg, fw, log
        n = len(cfg.uplinks)
        # host mode (mmr host): the VI's address is never an interface's, so "auto" translates
        # every IPv4 source; "none" is for networks that route the VI's prefix to the host (a
        # VI without an IPv4 address has nothing to translate)
        self.router = router
        self.vi4 = not router and any(ipaddress.ip_interface(a).version == 4 for a in cfg.host.get("addresses", []))
        self.modes = [self.mode_of(u) for u in cfg.uplinks]
        self.nat = self.npt = self.nat6 = None
        self.ports = None
        masq6 = [u.nat6 == "masquerade" for u in cfg.uplinks]
        if any(self.modes) or any(masq6):
            if cfg.nat_ports is None:
                avoid = kernel_port_range()
                self.ports = port_list((1024, 65535), avoid)
                kw = {"avoid": avoid}
            else:
                self.ports = port_list(cfg.nat_ports)
                k = kernel_port_range()
                if k and cfg.nat_ports[0] <= k[1] and k[0] <= cfg.nat_ports[1]:
                    log.warning(f"nat_ports {cfg.nat_ports[0]}-{cfg.nat_ports[1]} overlaps the kernel's "
                                f"ip_local_port_range {k[0]}-{k[1]}: the router's own connections on a "
                                f"translating uplink's address may lose their replies to mappings")
                kw = {"port_range": cfg.nat_ports}
            cap = max(1024, min(cfg.flow_capacity, 1 << 22))
            if any(self.modes):
                self.nat = Nat44(n, cap, **kw)
            if any(masq6):
                self.nat6 = Nat66(n, cap, **kw)
                for u in range(n):
                    if masq6[u]:
                        self.nat6.set_address(u, None, hold=True)   # until its address is known
        if router and any(u.nat6 == "npt" for u in cfg.uplinks):
            self.npt = Npt66(n)
        self.addrs: list = [None] * n
        self.addrs6: list = [None] * n           # NAPT66: each masquerading uplink's address
        self.active = [0] * n                    # modes in effect (auto: only with a private LAN)
        self.npt_maps: list = [None] * n         # (LAN prefix, outer prefix) mapped
        self.npt_avoid: list = [()] * n          # outer addresses in use on the link: kept clear of
        self.npt_held: list = [None] * n         # npt_prefix "auto", no prefix yet: why (a sentence)
        self.proxies: dict = {}                  # uplink -> its proxy ND (engine/ndproxy.py; router.py's)
        self.waiting = [False] * n               # said that it has no IPv4 address (once)
        self.lose_at: list = [None] * n          # when a gone address's mappings go
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
                        self.nat.set_forward(u, f.proto, f.ports[0], f.ports[1], f.to.packed, f.to_port)
                        self.forward_ports[f.proto].append(f.ports)
        fw.set_nat(self.nat, self.active, self.npt, self.nat6)

    def mode_of(self, up) -> int:
        """The IPv4 translation mode of an uplink: its nat key's (router), or in host mode 2
        (every source) unless it says "none" or the VI has no IPv4 address."""
        if self.router:
            return NAT_MODES[up.nat]
        return 2 if self.vi4 and up.nat != "none" else 0

    def missing(self, up) -> str | None:
        """What an uplink added by mmr reload would need that mmr did not start with (a
        translator is sized and shared at start): a sentence, or None."""
        if self.mode_of(up) and self.nat is None:
            return (f"uplink {up.name} translates IPv4 (nat = \"{up.nat}\") but mmr started without a "
                    f"translating uplink; restart mmr to add it, or write nat = \"none\"")
        if up.nat6 == "masquerade" and self.nat6 is None:
            return (f"uplink {up.name} has nat6 = \"masquerade\" but mmr started without a NAPT66 uplink; "
                    f"restart mmr to add it, or write nat6 = \"none\"")
        if up.nat6 == "npt" and self.npt is None:
            return (f"uplink {up.name} has nat6 = \"npt\" but mmr started without an NPT uplink; "
                    f"restart mmr to add it")
        return None

    def removing(self, u: int) -> None:
        """mmr reload takes uplink u out: its address goes with its device, and that is no
        reason to warn that it waits for one (reslot empties it next)."""
        self.waiting[u] = True

    def reslot(self, u: int, cfg) -> int:
        """Slot u's uplink changed (mmr reload emptied it or put another there): its mappings
        and NPT prefixes go, its mode is the new uplink's.  The caller refreshes afterwards.
        Returns the mappings that went."""
        self.cfg = cfg
        up = cfg.uplinks[u]
        gone = 0
        if self.nat is not None:
            gone = self.nat.flush_uplink(u)
            self.nat.set_address(u, None)
        if self.nat6 is not None:
            # NAPT66: the old uplink's mappings go; a masquerading newcomer translates once
            # the refresh finds its address (until then its IPv6 is dropped, as at start)
            gone += self.nat6.flush_uplink(u)
            self.nat6.set_address(u, None, hold=up.nat6 == "masquerade")
        if self.npt is not None:
            self.npt.set_prefixes(u, None, None)
        self.modes[u] = self.mode_of(up)
        self.addrs[u], self.waiting[u], self.lose_at[u] = None, False, None
        self.addrs6[u] = None
        self.npt_maps[u], self.npt_avoid[u], self.npt_held[u] = None, (), None
        return gone

    def refresh(self, state, up_index: list, lan_prefixes: list, gateways: list | None = None) -> bool:
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
            self.fw.set_nat(self.nat, active, self.npt, self.nat6)
            changed = True
        for u, up in enumerate(self.cfg.uplinks):
            if self.nat is not None:
                idx = up_index[u]
                v4 = [a for a in (state.addresses(idx) if idx is not None and active[u] else [])
                      if a.version == 4 and not a.is_link_local]
                addr = v4[0] if v4 else None
                if addr != self.addrs[u]:
                    changed = True
                    self.addrs[u] = addr
                    if addr is None and self.nat.address(u) is not None:
                        # the address went (its device too, maybe): its mappings linger a
                        # moment, so the next packets of the flows the connection manager
                        # moves to another uplink find them there (counted as moved)
                        self.lose_at[u] = time.time() + LINGER_S
                    else:
                        gone = (self.nat.flush_uplink(u) if addr is not None and self.nat.address(u) not in (None, addr.packed)
                                else 0)
                        self.nat.set_address(u, addr)
                        self.lose_at[u] = None
                        if addr is not None:
                            self.log(f"uplink {up.name} translates IPv4 to {addr}"
                                     + (f" (the old address's {gone} mappings are gone)" if gone else ""))
                # no address (yet: DHCP, PPP, a device still absent): said once, translation
                # starts when the address comes
                if addr is None and active[u] and not self.waiting[u]:
                    self.waiting[u] = True
                    self.log.warning(f"uplink {up.name} ({up.device}"
                                     + (", absent" if idx is None else "") + ") has no IPv4 address: it "
                                     "translates once it has one; until then its translated flows are dropped "
                                     "(nat_no_address)")
                elif addr is not None or not active[u]:
                    self.waiting[u] = False
            if self.nat6 is not None and up.nat6 == "masquerade":
                idx = up_index[u]
                a6 = state.address6(idx) if idx is not None else None
                if a6 != self.addrs6[u]:
                    changed = True
                    self.addrs6[u] = a6
                    self.nat6.set_address(u, a6, hold=True)
                    if a6 is not None:
                        self.log(f"uplink {up.name} translates IPv6 to {a6} (NAPT66)")
                    else:
                        self.log.warning(f"uplink {up.name} ({up.device}) has no global IPv6 address: IPv6 "
                                         f"through it is dropped (nat_no_address) until it has one")
            if self.npt is not None and up.nat6 == "npt":
                changed = self.refresh_npt(u, up, state, up_index[u], lan_prefixes,
                                           gateways[u] if gateways else None) or changed
        return changed

    def refresh_npt(self, u: int, up, state, idx, lan_prefixes: list, gateway: bytes | None) -> bool:
        """NPT's prefixes of one uplink: the LAN prefix of npt_prefix's length (unique local
        ones first: RFC 6296's case) onto npt_prefix, or with npt_prefix "auto" onto the
        uplink's own prefix of the LAN prefix's length; the addresses in use on the outer
        prefix kept clear of.  True when something changed."""
        auto = up.npt_prefix is None
        lans = sorted((p for p in lan_prefixes if p.version == 6 and
                       (p.prefixlen <= 64 if auto else p.prefixlen == up.npt_prefix.prefixlen)),
                      key=lambda p: (not p.subnet_of(ULA), p))
        inner = lans[0] if lans else None
        outer, why = up.npt_prefix, None
        if auto and inner is not None:
            outer, why = own_prefix(state, idx, inner.prefixlen)
        # the gateway mmr uses, and the kernel's default route's (a route event reaches here
        # before the engine takes its new next hop)
        gws = [g for g in (gateway, state.default_gateway(idx, 6) if idx is not None else None) if g]
        avoid = in_use(state, idx, outer, gws) if outer is not None and inner is not None else ()
        if len(avoid) > NPT_AVOID:
            self.log.warning(f"uplink {up.name}: {len(avoid)} addresses in use on {outer}; NPT keeps clear "
                             f"of the first {NPT_AVOID} (the router's own first)")
            avoid = avoid[:NPT_AVOID]
        pair = (inner, outer) if inner is not None and outer is not None else None
        if pair == self.npt_maps[u] and avoid == self.npt_avoid[u] and why == self.npt_held[u]:
            return False
        self.npt_maps[u], self.npt_avoid[u], self.npt_held[u] = pair, avoid, why
        if pair is not None:
            self.npt.set_prefixes(u, inner, outer, avoid)
            self.log(f"uplink {up.name} maps {inner} to {outer} (NPTv6"
                     + (", the uplink's own prefix" if auto else "") + ")")
        elif why is not None:
            self.npt.hold(u, inner)
            self.log.warning(f"uplink {up.name}: {why}; IPv6 from {inner} that would leave through it is "
                             f"dropped (nat_no_address) until it has one")
        else:
            self.npt.set_prefixes(u, None, None)
            length = "/64 or shorter" if auto else f"a /{up.npt_prefix.prefixlen} like npt_prefix {up.npt_prefix}"
            self.log.warning(f"uplink {up.name}: no IPv6 LAN prefix is {length}; IPv6 leaves it untranslated")
        return True

    def on_link(self, state, u: int, idx) -> bool:
        """Uplink u's outer prefix is on its link (one of its addresses is in it): the ISP's
        router resolves the translated addresses there, and someone must answer."""
        m = self.npt_maps[u]
        return m is not None and idx is not None and any(
            a.version == 6 and a in m[1] for a in state.addresses(idx))

    def expire(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        k = self.nat6.expire(now) if self.nat6 is not None else 0
        if self.nat is None:
            return k
        for u, at in enumerate(self.lose_at):
            if at is not None and now >= at:
                self.lose_at[u] = None
                gone = self.nat.flush_uplink(u)
                self.nat.set_address(u, None)
                self.log(f"uplink {self.cfg.uplinks[u].name}: its IPv4 address is gone, and its {gone} "
                         f"mappings with it")
        return self.nat.expire(now) + k

    def guard_sets(self) -> dict:
        return {"nat4": ("ipv4_addr", [str(a) for a in self.addrs if a is not None]),
                "npt6": ("ipv6_addr", [str(m[1]) for m in self.npt_maps if m is not None]),
                "nat6": ("ipv6_addr", [str(a) for a in self.addrs6 if a is not None])}

    def guard_rules(self, uplinks: list[str]) -> list[str]:
        """Rules for the kernel guard, before its 'the router itself' rule."""
        ups = ", ".join(f'"{d}"' for d in uplinks)
        rules = []
        if self.ports is not None:
            ranges = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in port_ranges(self.ports))
            rules.append(f"iifname {{ {ups} }} ip daddr @nat4 meta l4proto {{ tcp, udp }} th dport {{ {ranges} }} "
                         f"counter drop")
            rules.append(f"iifname {{ {ups} }} ip6 daddr @nat6 meta l4proto {{ tcp, udp }} th dport {{ {ranges} }} "
                         f"counter drop")
        for proto, name in ((6, "tcp"), (17, "udp")):
            if self.forward_ports[proto]:
                fwd = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in sorted(set(self.forward_ports[proto])))
                rules.append(f"iifname {{ {ups} }} ip daddr @nat4 {name} dport {{ {fwd} }} counter drop")
        # the router's own addresses in an NPT prefix (npt_prefix "auto": its own) stay its own
        rules.append(f"iifname {{ {ups} }} ip6 daddr @npt6 fib daddr type != local counter drop")
        return rules

    def status(self) -> dict:
        names = [u.name for u in self.cfg.uplinks]
        out = {"uplinks": {}}
        if self.nat is not None:
            st = self.nat.stats()
            out.update(mappings=st["mappings"], capacity=st["capacity"], ports=st["ports"],
                       exhausted=st["exhausted"], moved=st["moved"])
        if self.nat6 is not None:
            st6 = self.nat6.stats()
            out["napt66"] = {k: st6[k] for k in ("mappings", "capacity", "ports", "exhausted", "moved")}
        for u, name in enumerate(names):
            if not name:                            # a free uplink slot (engine/slots.py)
                continue
            t = {"nat": self.cfg.uplinks[u].nat, "nat6": self.cfg.uplinks[u].nat6}
            t["translating"] = bool(self.active[u])
            if self.nat is not None and self.active[u]:
                t["address"] = None if self.addrs[u] is None else str(self.addrs[u])
                t["mappings"] = st["uplinks"][u]
            if self.nat6 is not None and self.cfg.uplinks[u].nat6 == "masquerade":
                t["address6"] = None if self.addrs6[u] is None else str(self.addrs6[u])
                t["mappings6"] = st6["uplinks"][u]
            if self.npt_maps[u] is not None:
                t["npt"] = f"{self.npt_maps[u][0]} <-> {self.npt_maps[u][1]}"
                t["npt_avoided"] = [str(a) for a in self.npt_avoid[u]]
            elif self.npt_held[u] is not None:
                t["npt_held"] = self.npt_held[u]
            if u in self.proxies:
                t["proxy_nd"] = dict(self.proxies[u].counts)
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
    out = {"uplinks": {u.name: u.edge for u in cfg.uplinks if not u.empty},
           "routed_prefixes": [str(n) for n in cfg.routed_prefixes],
           "forwards": [{"proto": {6: "tcp", 17: "udp"}[f.proto], "port": f"{f.ports[0]}-{f.ports[1]}",
                         "to": str(f.to), "to_port": f.to_port, "uplinks": [names[u] for u in f.uplinks]}
                        for f in cfg.forwards]}
    if edge is not None:
        out.update(edge.stats())
    return out
