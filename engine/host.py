"""``mmr host``: the engine (engine/datapath.py) with the virtual interface of draft-hong-mif
as its inside.

    stack --> vi0 (TUN) --Forwarder.step_inside--> interface TxSockets (gateway MAC in front)
    interface rings --Forwarder.step_uplink--> for the VI's addresses --> vi0

Applications bind to the VI's stable address and never see which physical interface carries
their packets; the connection manager moves flows when an interface fails, so open TCP
connections continue.

The TUN device carries a virtio-net header (IFF_VNET_HDR) and offers the stack the
offloads the kernel accepts (checksum, TCP and UDP segmentation: engine/_tun): the stack
hands vi0 64 KiB super-frames, which go out on the interface's packet socket with their
header for the kernel to segment, and GRO super-frames from the interfaces reach the stack
whole.  The ready line says which offloads were taken; a kernel that refuses the header
gets the plain device (a warning, one packet per read).  MMR_TUN_OFFLOADS=0 in the
environment asks for the plain device (tests, comparisons).

IPv4 is translated per interface (engine/translate.py's NAPT44 with the VI as its LAN; nat
"auto" means every source here): a packet from the VI leaves with the interface's own
address and a mapping port, the reply comes back to the VI's address; the rest of what
reaches an interface's address is the host's own (its sockets' ports are the kernel's
range, never a mapping's), and what the host's kernel sends from an interface's address but
routes via the VI (its default route) leaves by that interface untranslated (``fw.own``).
IPv6 is translated only where an interface says nat6 = "masquerade" (NAPT66); else the VI's
IPv6 prefix must be routed to the host.

Interfaces sit in uplink slots as the router's uplinks do (engine/slots.py): mmr reload adds
one into a free slot (opened, translated, probed and guarded as at start; refuse_added says
what it may not be) and removes one (its flows moved, its device handed back).

On start mmr creates the TUN device and gives it the addresses and routes of [host]; the
kernel guard (engine/guard.py, table ``inet mmrhost``) keeps the kernel from also delivering
VI-addressed packets that arrive on the physical interfaces, and replies to mappings' ports
on the interfaces' addresses, with the same handover as the router.  On stop the TUN device
goes (its addresses and routes with it) and the table is removed: the host is as it was.
"""
from __future__ import annotations

import ipaddress
import os
import subprocess

from engine.datapath import Datapath, Inside
from engine.errors import ConfigError, UserError
from engine.inet import mapped16

NFT_TABLE = "mmrhost"


class VirtualInterface(Inside):
    def __init__(self, cfg):
        super().__init__("host", router=False, log_prefix="mmr host", default_policy="default-host.toml")
        self.vi = cfg.host["vi"]
        self.addrs = [ipaddress.ip_interface(a) for a in cfg.host["addresses"]]
        self.tun = None
        self.mtu = None
        self.bypass_said = False
        self.check(cfg)

    def check(self, cfg) -> None:
        """What host mode cannot take from a policy file (at start and in a reload)."""
        for i, u in enumerate(cfg.uplinks):
            if u.nat6 == "npt":           # NPTv6 maps a LAN prefix; the VI's address takes NAPT66
                raise ConfigError(cfg.path, f"uplink[{i}].nat6", f'"npt" is not available in host mode '
                                  f"(it maps a LAN prefix; {self.vi} has addresses)",
                                  'write "masquerade" (IPv6 from the VI leaves with the interface\'s own '
                                  'address) or "none" (the networks route the VI\'s prefix to this host)')

    def devices_needed(self, cfg) -> list[str]:
        return []

    def refuse_added(self, dp: Datapath, cfg, added: list) -> str | None:
        """Why a reload may not add these interfaces (a sentence), or None.  vi0 was sized at
        start by the smallest interface MTU (or host.mtu) and keeps it: mmr does not change a
        device of the host's stack under running connections, and an interface with a
        smaller MTU could not carry what vi0 hands it.  So an added interface needs its
        device now (its MTU is checked), an MTU of at least vi0's, and addresses of its own."""
        try:
            self.check(cfg)
        except ConfigError as exc:
            return str(exc)
        for up in added:
            link = dp.state.link(up.device)
            if link is None:
                return (f"device {up.device!r} of the added interface {up.name} does not exist; mmr host adds "
                        f"an interface whose device is there ('ip link' lists them)")
            if link.mtu < self.mtu:
                return (f"interface {up.name}'s device {up.device} has MTU {link.mtu}, below {self.vi}'s "
                        f"{self.mtu}; raise {up.device}'s MTU to {self.mtu}, or set host.mtu = {link.mtu} "
                        f"and restart mmr host")
            clash = {a.ip for a in self.addrs} & set(dp.state.addresses(link.index))
            if clash:
                return (f"address {sorted(map(str, clash))[0]} of host.addresses is on {up.device}; the "
                        f"virtual interface needs addresses of its own")
        return None

    def open(self, dp: Datapath, batch: int) -> None:
        from engine._tun import Tun

        cfg, h = dp.cfg, dp.cfg.host
        if dp.state.link(self.vi) is not None or os.path.exists(f"/sys/class/net/{self.vi}"):
            raise UserError(f"a device named {self.vi!r} already exists; remove it or set host.vi")
        real = [u for u in cfg.uplinks if not u.empty]     # (free uplink slots: engine/slots.py)
        for u in real:
            idx = dp.state.index(u.device)
            clash = {a.ip for a in self.addrs} & set(dp.state.addresses(idx))
            if clash:
                raise UserError(f"address {sorted(map(str, clash))[0]} of host.addresses is already on "
                                f"{u.device}; the virtual interface needs addresses of its own")
        mtu = min(dp.state.link(u.device).mtu for u in real)
        self.mtu = min(mtu, h["mtu"]) if h["mtu"] else mtu
        self.tun = Tun(self.vi, capacity=batch, mtu=self.mtu,
                       offloads=os.environ.get("MMR_TUN_OFFLOADS", "1") not in ("0", "off", "no"))
        dp.closables.append(self)          # the TUN goes (with its addresses and routes) on close
        if not self.tun.vnet_hdr:
            dp.log.warning(f"{self.vi} without offloads ({self.tun.fallback}): the stack segments and "
                           f"checksums every packet before mmr reads it, one read per packet")
        self._configure(h)
        dp.fw.in_mtu = 65535               # the stack takes what arrives, super-frames included
        dp.fw.attach(tun=self.tun)

    def _configure(self, h) -> None:
        vi = self.vi
        subprocess.run(["ip", "link", "set", vi, "mtu", str(self.mtu), "up"], check=True, capture_output=True)
        for a in self.addrs:
            extra = ["nodad"] if a.version == 6 else []
            p = subprocess.run(["ip", "addr", "add", str(a), "dev", vi, *extra], capture_output=True, text=True)
            if p.returncode != 0:
                raise UserError(f"cannot put {a} on {vi} ({p.stderr.strip()})")
        routes = []
        for r in h["routes"]:
            if r == "default":       # for each family the VI has an address of
                routes += [("-6", r)] * any(a.version == 6 for a in self.addrs)
                routes += [("-4", r)] * any(a.version == 4 for a in self.addrs)
            else:
                routes.append(("-6" if ":" in r else "-4", r))
        for fam, r in routes:
            p = subprocess.run(["ip", fam, "route", "add", r, "dev", vi, "metric", str(h["route_metric"])],
                               capture_output=True, text=True)
            if p.returncode != 0:
                raise UserError(f"cannot route {r} via {vi} ({p.stderr.strip()}); another route with "
                                f"metric {h['route_metric']}? change host.route_metric")

    def tables(self, dp: Datapath) -> None:
        for a in self.addrs:
            dp.fw.local.set(mapped16(a.ip), 1)
        self.refresh_own(dp)
        dp.translation.refresh(dp.state, dp.up_index, [])

    def refresh_own(self, dp: Datapath) -> None:
        """The interfaces' own addresses: what the host's kernel sends from one of them via
        vi0 (its default route) leaves by that interface, untranslated."""
        dp.fw.own.clear()
        for u, idx in enumerate(dp.up_index):
            for a in (dp.state.addresses(idx) if idx is not None else []):
                dp.fw.own.set(mapped16(a), u)

    def link_event(self, dp: Datapath, ev: tuple) -> None:
        """An interface's address changed: the own-address table and the translations follow
        it, and the guard's set of translated addresses with them."""
        if ev[0] in ("addr", "resync", "gone"):
            self.follow_addresses(dp)

    def uplinks_changed(self, dp: Datapath) -> None:
        """An interface's device came or went, or a reload added or removed one: as when an
        address changes."""
        self.follow_addresses(dp)

    def follow_addresses(self, dp: Datapath) -> None:
        self.refresh_own(dp)
        if dp.translation.refresh(dp.state, dp.up_index, []) and dp.guard is not None:
            dp.guard.update_sets(dp.translation.guard_sets())

    def fds(self) -> list[int]:
        return [self.tun.fileno()]

    def tx_qdisc_bypass(self, dp: Datapath, up) -> bool:
        """With segmentation offloads on vi0 the interfaces' sockets go through the qdisc path:
        PACKET_QDISC_BYPASS hands a frame to the driver as it is, so a super-frame the device
        cannot segment itself (no TSO, or no USO: most NICs, Wi-Fi, USB modems) would be
        dropped there; through dev_queue_xmit the kernel segments it in software."""
        segments = bool(self.tun is not None and self.tun.offloads & ~1)   # more than csum
        if up.qdisc_bypass and segments:
            if not self.bypass_said:
                self.bypass_said = True
                dp.log.debug(f"{self.vi}'s super-frames go out through each interface's qdisc (qdisc_bypass "
                             f"off): the kernel segments them where a device cannot")
            return False
        return up.qdisc_bypass

    def guard(self, dp: Datapath):
        """The kernel must not also take the VI's packets off the interfaces, nor the replies
        to translated flows (to an interface's address and a mapping's port: its stack would
        answer them with a reset or a port unreachable)."""
        ups = [u.device for u in dp.cfg.uplinks if not u.empty]
        a6 = ", ".join(str(a.ip) for a in self.addrs if a.version == 6)
        a4 = ", ".join(str(a.ip) for a in self.addrs if a.version == 4)
        rules = ([f"ip6 daddr {{ {a6} }} drop"] if a6 else []) + ([f"ip daddr {{ {a4} }} drop"] if a4 else [])
        rules += dp.translation.guard_rules(ups)
        return NFT_TABLE, ups, rules, dp.translation.guard_sets()

    def offload_text(self) -> str:
        if self.tun is None or not self.tun.vnet_hdr:
            return "offloads none"
        return "offloads " + (",".join(self.tun.offload_names) or "none")

    def ready_line(self, dp: Datapath) -> str:
        return (f"{self.vi} up ({', '.join(str(a) for a in self.addrs)}; routes "
                f"{', '.join(dp.cfg.host['routes'])}; {self.offload_text()}) over " +
                ", ".join(f"{u.name}({u.device})" for u in dp.cfg.uplinks if not u.empty))

    def close(self, dp: Datapath | None = None) -> None:
        if self.tun is not None:
            self.tun.close()                  # the TUN device, its addresses and routes go
            self.tun = None


class Host(Datapath):
    """``mmr host``."""

    def __init__(self, cfg, **kw):
        super().__init__(cfg, VirtualInterface(cfg), **kw)
