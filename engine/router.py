"""``mmr run``: the engine (engine/datapath.py) with a LAN device as its inside.

    LAN ring --Forwarder.step_inside--> uplink TxSockets     (router: hop limit - 1, MACs)
    uplink rings --Forwarder.step_uplink--> LAN TxSocket     (to a LAN prefix: the host's MAC)

What is the router's own stays with its kernel: frames to its addresses (any device),
broadcast, multicast, link-local (neighbour discovery), other MACs.  Everything mmr forwards
the kernel leaves alone while mmr runs (engine/guard.py: table ``inet mmr``), and takes back
the moment mmr stops, without a gap or a duplicate.  The LAN hosts' MACs come from the
kernel's neighbour table, followed over netlink; a host not known yet is resolved by
prompting the kernel (a datagram to the discard port), rate-limited.  The LAN device is
bound to its name: deleted, its rings close and the rest runs on; a device of that name
(re-created, or absent at start) is opened as it is then (``Lan.follow_device``).
"""
from __future__ import annotations

import ipaddress
import select

from engine import counters as CT
from engine.config import to_mapped
from engine.datapath import Datapath, Inside
from engine.netlink import addr16

NFT_TABLE = "mmr"

def guard_rules(uplinks: list[str], translation: list[str] = ()) -> list[str]:
    """What the kernel keeps while mmr runs, on mmr's devices; the rest is mmr's.  The sets
    are the engine's own tables: @lan6/@lan4 its LAN prefixes (from an uplink: mmr delivers),
    @kernel6/@kernel4 what the kernel routes itself (the LAN's prefixes, a DMZ, a VPN: from
    the LAN, the kernel forwards), so the two never disagree about a packet.  translation:
    engine/translate.py's rules (replies to mappings' ports on the uplinks' addresses, the
    NPT prefixes: mmr's, though addressed to the router or routed to it)."""
    ups = ", ".join(f'"{d}"' for d in uplinks)
    return [
        "ip6 daddr { fe80::/10, ff00::/8 } accept",    # link-local, multicast (ND, DHCPv6, RA)
        "ip6 saddr { fe80::/10, :: } accept",          # never forwarded, by mmr or the kernel
        "ip daddr 224.0.0.0/3 accept",                 # multicast, limited broadcast
        *translation,
        "fib daddr type { local, broadcast, multicast, anycast } accept",   # the router itself
        f"iifname {{ {ups} }} ip6 daddr @lan6 counter drop",  # ISP -> LAN: mmr delivers it
        f"iifname {{ {ups} }} ip daddr @lan4 counter drop",
        f"iifname {{ {ups} }} accept",                 # ISP -> elsewhere: the kernel's business
        "ip6 daddr @kernel6 accept",                   # LAN -> the kernel's other networks
        "ip daddr @kernel4 accept",
        "counter drop",                                # LAN -> the world: mmr forwards it
    ]


def prefix_text(value: bytes, plen: int) -> tuple[str, str]:
    """(nft set type, prefix text) of a row-form prefix (IPv4-mapped for IPv4)."""
    if value[:12] == bytes(10) + b"\xff\xff" and plen >= 96:
        return "ipv4_addr", str(ipaddress.ip_network((value[12:], plen - 96), strict=False))
    return "ipv6_addr", str(ipaddress.ip_network((value, plen), strict=False))


class Lan(Inside):
    def __init__(self, cfg):
        super().__init__("router", router=True, log_prefix="mmr", default_policy="default.toml")
        self.dev = cfg.lan
        self.ring = self.tx = None
        self.guard_sets = None
        self.routes_warned = False
        self.index = None
        self.rows: dict[bytes, int] = {}           # LAN host address -> row of host_mac
        self.free: list[int] = []
        self.full_warned = False

    def devices_needed(self, cfg) -> list[str]:
        return [cfg.lan]

    def open(self, dp: Datapath, batch: int) -> None:
        self.batch = batch
        self.free = list(range(dp.fw.n_hosts - 1, -1, -1))
        if dp.state.link(self.dev) is None:
            # like an uplink's modem, the LAN's device may come later (a USB adapter, a bridge
            # made by another service): waited for, and opened when it appears (back())
            dp.log.warning(f"the LAN device {self.dev} does not exist yet; nothing is forwarded until it "
                           f"appears ('ip link' lists the devices: check engine.lan if it never does)")
            return
        self._open(dp)

    def _open(self, dp: Datapath) -> None:
        """This thread's ring and socket on the LAN device as it is now (index, MAC, MTU),
        attached to the Forwarder; the caller joins the workers' rings to them."""
        from engine._ring import RxRing, TxSocket

        link = dp.state.link(self.dev)
        ring = RxRing(self.dev, frames=dp.cfg.ring_frames, mtu=link.mtu, capacity=self.batch)
        try:
            tx = TxSocket(self.dev)
        except BaseException:
            ring.close()
            raise
        self.ring, self.tx = ring, tx
        dp.closables += [ring, tx]
        self.index = link.index
        dp.fw.in_mac[0] = list(link.mac[:6])
        dp.fw.in_mtu = link.mtu
        dp.fw.attach(in_ring=ring, in_tx=tx)

    def _close(self, dp: Datapath) -> None:
        dp.fw.attach(in_ring=None, in_tx=None)
        for c in (self.ring, self.tx):
            if c is None:
                continue
            c.close()
            if c in dp.closables:
                dp.closables.remove(c)
        self.ring = self.tx = None
        self.index = None

    def follow_device(self, dp: Datapath) -> None:
        """The LAN device as netlink last described it: one deleted (or renamed away, or
        re-created under a new index) is let go, one of its name that is there is taken."""
        idx = dp.state.index(self.dev)
        if self.index is not None and idx != self.index:
            self.gone(dp)
        if self.ring is None and idx is not None:
            self.back(dp)

    def gone(self, dp: Datapath) -> None:
        """The LAN device vanished: every worker's ring and socket on it closed (so its fanout
        group with them), its hosts forgotten.  The uplinks, the flows, their translations
        and the LAN prefixes stay: a LAN host that comes back with the device finds its flows
        where they were."""
        dp.log(f"the LAN device {self.dev} disappeared; the uplinks and the flows stay, and nothing is read "
               f"from or sent to the LAN until a device {self.dev} is back")
        dp.counters[CT.INDEX["lan_gone"]] += 1
        dp._read_ring_drops()                    # what its rings dropped, before they close
        dp.on_workers(lambda w: w.detach_inside())
        if self.ring is not None:
            dp.poller.unregister(self.ring.fileno())
        self._close(dp)
        self.forget_hosts(dp)
        self.refresh_kernel_routes(dp)

    def back(self, dp: Datapath) -> None:
        """A device of the LAN's name is there (re-created, or absent at start): a ring and
        socket on it for every worker (one new fanout group), its MAC and MTU read, its
        prefixes (when learned) and neighbours taken afresh."""
        from engine.errors import UserError
        from engine.workers import join_fanout

        theirs: list = []
        try:
            self._open(dp)
            for w in dp.workers:
                theirs.append(w.open_inside())
            if dp.workers:
                join_fanout([self.ring.sock] + [rx.sock for rx, _ in theirs], self.dev)
        except (OSError, UserError) as exc:
            # gone again before it was opened, or no fanout group: tried again at its next event
            for c in [x for pair in theirs for x in pair]:
                c.close()
            self._close(dp)
            dp.log.warning(f"the LAN device {self.dev} appeared but could not be opened ({exc}); "
                           f"tried again when it changes")
            return
        dp.on_workers(lambda w: w.attach_inside(*theirs[w.k - 1]))
        dp.poller.add_source(self.ring.fileno())
        self.forget_hosts(dp)
        self.tables(dp)
        link = dp.state.link(self.dev)
        dp.log(f"the LAN device {self.dev} is here (index {self.index}, MTU {link.mtu}); forwarding to "
               f"and from it")
        dp._tables_changed()

    def forget_hosts(self, dp: Datapath) -> None:
        """The LAN neighbours start afresh (a vanished device's entries go without events)."""
        for key in list(self.rows):
            dp.fw.hosts.remove(key)
            self.free.append(self.rows.pop(key))

    def tables(self, dp: Datapath) -> None:
        self.apply(dp, dp.cfg)
        self.refresh_local(dp)
        self.refresh_kernel_routes(dp)
        for (index, addr) in list(dp.state.neigh):
            if index == self.index:
                self.neighbour(dp, index, addr)

    def learn_prefixes(self, dp: Datapath, cfg) -> bool:
        """Without lan_prefixes in the config, the LAN is what the LAN device's addresses are
        on (IPv6 and IPv4, link-local left out), followed as they change; True if it changed."""
        if not cfg.lan_prefixes_learned or self.index is None:
            # while the device is absent its prefixes stay what they were: nothing reaches
            # the LAN anyway, and the translations of its hosts' flows (NAT "auto" is on
            # for a private LAN only) are there when it is back and learned afresh
            return False
        nets = dp.state.networks(self.index)
        if len(nets) > dp.fw.lan_net.shape[0]:
            nets = nets[:dp.fw.lan_net.shape[0]]
        if nets == cfg.lan_prefixes:
            return False
        cfg.lan_prefixes = nets
        if nets:
            dp.log(f"LAN prefixes (from {self.dev}): {', '.join(map(str, nets))}")
        else:
            dp.log.warning(f"the LAN device {self.dev} has no address beyond link-local: no LAN "
                           f"prefix known, so nothing from the uplinks is forwarded to the LAN until "
                           f"it has one (or set engine.lan_prefixes)")
        return True

    def apply(self, dp: Datapath, cfg) -> None:
        self.learn_prefixes(dp, cfg)
        self.refresh_translation(dp, cfg)
        nets = [to_mapped(n) for n in cfg.lan_prefixes]
        dp.fw.set_lan_prefixes([(n.network_address.packed, n.netmask.packed) for n in nets])
        if self.guard_sets is not None:
            self.refresh_kernel_routes(dp)

    def refresh_translation(self, dp: Datapath, cfg=None) -> bool:
        """The translators from the kernel's state (engine/translate.py), then the proxies
        that answer for NPT's translations on the uplinks where its prefix is on-link."""
        cfg = cfg or dp.cfg
        gw6 = [g[1] for g in dp.gw_addr] if hasattr(dp, "gw_addr") else None   # IPv6 next hops: NPT avoids them
        changed = dp.translation.refresh(dp.state, dp.up_index, cfg.lan_prefixes, gw6)
        self.follow_proxies(dp)
        return changed

    def follow_proxies(self, dp: Datapath) -> None:
        """A proxy per Ethernet uplink whose NPT prefix is on its link (npt_prefix "auto", or
        one the ISP made on-link); none on an L3 uplink (no neighbour discovery there: the
        ISP routes the prefix to the device).  Opened and closed as prefixes come and go."""
        from engine.ndproxy import NdProxy

        for u, up in enumerate(dp.cfg.uplinks):
            idx = dp.up_index[u]
            tx = dp.up_tx[u] if hasattr(dp, "up_tx") else None
            want = (dp.translation.npt is not None and tx is not None and not tx.l3
                    and dp.translation.on_link(dp.state, u, idx))
            p = dp.translation.proxies.get(u)
            if not want:
                if p is not None:
                    dp.poller.unregister(p.fileno())
                    p.close()
                    del dp.translation.proxies[u]
                    dp.log(f"uplink {up.name}: its NPT prefix is not on {up.device}'s link any more; "
                           f"no proxy neighbour discovery there")
                continue
            if p is None:
                try:
                    p = NdProxy(up.device, lambda target, u=u: self.translated_host(dp, u, target), dp.log)
                except OSError as exc:
                    dp.log.warning(f"uplink {up.name}: cannot answer neighbour solicitations on {up.device} "
                                   f"({exc}); the ISP's router cannot resolve the translated LAN hosts")
                    continue
                dp.translation.proxies[u] = p
                dp.closables.append(p)
                dp.poller.register(p.fileno(), select.POLLIN, p.readable)
                dp.log(f"uplink {up.name}: answers neighbour solicitations on {up.device} for the LAN "
                       f"hosts' translations (proxy neighbour discovery)")
            link = dp.state.links.get(idx)
            ll = next((a for a in dp.state.addrs.get(idx, {}) if len(a) == 16 and a[:2] == b"\xfe\x80"), None)
            p.set_addresses(link.mac if link is not None else b"", ll)

    def translated_host(self, dp: Datapath, u: int, target: bytes) -> bool:
        """target is uplink u's translation of a LAN host mmr knows (its MAC is in the
        forwarder's hosts): never the router's own or the gateway's (the translator keeps
        clear of them), nor any address the LAN has no host at."""
        inner = dp.translation.npt.address(u, target, False)
        return inner is not None and addr16(inner.packed) in self.rows

    def refresh_local(self, dp: Datapath) -> None:
        """The router's own addresses (every device) and IPv4 broadcasts: left to its kernel."""
        dp.fw.local.clear()
        full = [a for a in dp.state.local16() if not dp.fw.local.set(a, 1)]
        if full and not self.full_warned:
            dp.log.warning(f"more than {dp.fw.local.capacity} addresses on this machine; "
                   f"{len(full)} are not recognised as the router's own")
            self.full_warned = True

    def neighbour(self, dp: Datapath, index: int, addr: bytes) -> None:
        if index != self.index:
            if index in dp.up_index and len(addr) == 16 and dp.translation.npt is not None:
                self.refresh_translation(dp)     # a neighbour on an uplink: NPT keeps clear of it
            return
        key = addr16(addr)
        mac = dp.state.neighbour(index, addr)
        row = self.rows.get(key)
        if mac is None:
            if row is not None:
                dp.fw.hosts.remove(key)
                self.free.append(self.rows.pop(key))
            return
        if row is None:
            if not self.free:
                if not self.full_warned:
                    dp.log.warning(f"more than {dp.fw.n_hosts} LAN neighbours; the newest wait "
                           f"until others go")
                    self.full_warned = True
                return
            row = self.free.pop()
            self.rows[key] = row
        dp.fw.host_mac[row] = list(mac)
        dp.fw.hosts.set(key, row)

    def link_event(self, dp: Datapath, ev: tuple) -> None:
        kind = ev[0]
        if kind in ("addr", "resync"):
            self.refresh_local(dp)
            learned = self.learn_prefixes(dp, dp.cfg)
            if learned:
                nets = [to_mapped(n) for n in dp.cfg.lan_prefixes]
                dp.fw.set_lan_prefixes([(n.network_address.packed, n.netmask.packed) for n in nets])
            if self.refresh_translation(dp) or learned:
                if kind == "addr":
                    self.refresh_kernel_routes(dp)
        if kind in ("route", "gone", "link"):
            self.refresh_translation(dp)         # a new gateway, a vanished uplink, a new MAC
        if kind in ("route", "resync", "gone"):
            self.refresh_kernel_routes(dp)
        if kind == "resync":
            self.forget_hosts(dp)
        link = dp.state.links.get(ev[1]) if kind == "link" and ev[1] == self.index else None
        if link is not None:                 # (None: gone again later in the same batch)
            dp.fw.in_mtu = link.mtu
            if len(link.mac) == 6:
                dp.fw.in_mac[0] = list(link.mac)

    def uplinks_changed(self, dp: Datapath) -> None:
        """An uplink's device came or went: its address for translation, and the routes
        through it are an uplink's again (or, gone, left the state with it).  The guard's
        rules name devices, not indexes, so a device re-created under its name matches them
        as it is."""
        dp.translation.refresh(dp.state, dp.up_index, dp.cfg.lan_prefixes)
        self.refresh_kernel_routes(dp)

    def resolve(self, dp: Datapath, addr: bytes) -> None:
        if self.index is not None:               # (absent: nobody to ask)
            dp._prompt(self.dev, addr)

    def punt_port(self, dp: Datapath, side: int, u: int):
        """(device, TxSocket) an ICMP error goes out of: where the frame came from."""
        if side == 0:
            return self.dev, self.tx
        return dp.cfg.uplinks[u].device, dp.up_tx[u]

    def fds(self) -> list[int]:
        return [self.ring.fileno()] if self.ring is not None else []

    def rings(self) -> list:
        return [self.ring] if self.ring is not None else []

    def status(self, dp: Datapath) -> dict:
        return {"lan": {"device": self.dev, "ifindex": self.index}}   # ifindex None: the device is absent

    def guard(self, dp: Datapath):
        ups = [u.device for u in dp.cfg.uplinks if not u.empty]
        return NFT_TABLE, [self.dev] + ups, guard_rules(ups, dp.translation.guard_rules(ups)), self.guard_sets

    def refresh_kernel_routes(self, dp: Datapath) -> None:
        """The destinations the kernel routes itself: the main table's routes through no
        uplink, and the LAN prefixes; into the Forwarder and the guard's sets together."""
        ups = {i for i in dp.up_index if i is not None}
        nets = [to_mapped(n) for n in dp.cfg.lan_prefixes]
        lan = [(n.network_address.packed, n.prefixlen) for n in nets]
        kernel = sorted(set(lan) | set(dp.state.routed_elsewhere(ups)))
        if len(kernel) > dp.fw.kernel_net.shape[0]:
            if not self.routes_warned:
                dp.log.warning(f"more than {dp.fw.kernel_net.shape[0]} routes through other devices; "
                       f"the longest prefixes are used")
                self.routes_warned = True
            kernel = sorted(kernel, key=lambda x: -x[1])[:dp.fw.kernel_net.shape[0]]
        masks = []
        for v, p in kernel:
            mask = ipaddress.IPv6Network(("::", p)).netmask.packed
            masks.append((bytes(a & b for a, b in zip(v, mask)), mask))
        dp.fw.set_kernel_prefixes(masks)
        sets = {"lan6": ("ipv6_addr", []), "lan4": ("ipv4_addr", []),
                "kernel6": ("ipv6_addr", []), "kernel4": ("ipv4_addr", []), **dp.translation.guard_sets()}
        for name, items in (("lan", lan), ("kernel", kernel)):
            for v, p in items:
                t, text = prefix_text(v, p)
                sets[name + ("4" if t == "ipv4_addr" else "6")][1].append(text)
        self.guard_sets = sets
        if dp.guard is not None:
            dp.guard.update_sets(sets)

    def ready_line(self, dp: Datapath) -> str:
        ups = ", ".join(f"{u.name}({u.device})" for u in dp.cfg.uplinks if not u.empty)
        workers = f" ({dp.n_workers} workers)" if getattr(dp, "n_workers", 1) > 1 else ""
        return (f"forwarding {self.dev} -> {ups}{workers}; the kernel leaves transit packets on these "
                f"devices to mmr")


class Router(Datapath):
    """``mmr run``."""

    def __init__(self, cfg, **kw):
        super().__init__(cfg, Lan(cfg), **kw)
