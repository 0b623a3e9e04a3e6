"""The live router: AF_PACKET rings on the LAN device and every uplink, the compiled core
in between.

    LAN ring --batch--> Pipeline (parse, classify, flowbase, select)
                         |  frames for the router itself, multicast, link-local -> kernel
                         v
                        rewrite (uplink MAC -> gateway MAC, hop limit - 1)
                         |  hop limit exhausted -> ICMP time exceeded back to the LAN
                         v
                        TxSocket of the chosen uplink (one sendmmsg per uplink per batch)

    uplink ring --batch--> parse --> destination in a LAN prefix? --> rewrite (LAN MAC ->
                           host MAC from the neighbour table) --> LAN TxSocket

While it runs, an nftables table (``inet mmr``) drops what the kernel would forward between
these devices, so every packet is forwarded once, by mmr; the table is removed when mmr
stops (SIGINT/SIGTERM).  Next-hop MACs come from the kernel's neighbour table (netlink via
pyroute2): a missing entry is resolved by prompting the kernel (a datagram to the discard
port from a socket bound to the device) and re-read every second, so changes are followed.
A static ``gateway_mac`` in the policy file skips all that.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import shutil
import socket
import subprocess
import sys
import time

import numpy as np

from engine import _parse, _rewrite
from engine import constants as C
from engine.config import to_mapped
from engine.errors import UserError
from engine.icmperr import packet_too_big, time_exceeded
from engine.inet import mapped16
from engine.netns import addresses, coalescing_on, set_features
from engine.pipeline import KERNEL, Pipeline
from engine.connmgr import ConnectionManager
from engine.control import ControlledEngine, ControlServer

NFT_TABLE = "mmr"


def _mac_text(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


class Neighbours:
    """Address -> MAC from the kernel's neighbour table, per device, with a small cache."""

    def __init__(self):
        from pyroute2 import IPRoute

        self.ipr = IPRoute()
        self.cache: dict[tuple[int, bytes], bytes] = {}
        self.asked: dict[tuple[int, bytes], float] = {}
        self.refreshed = 0.0

    def refresh(self) -> None:
        """Re-read the table: entries that changed are followed, failed ones dropped."""
        fresh = {}
        for msg in self.ipr.get_neighbours():
            lladdr = msg.get_attr("NDA_LLADDR")
            dst = msg.get_attr("NDA_DST")
            state = msg["state"]
            if not lladdr or not dst or state & (0x20 | 0x01):   # NUD_FAILED, NUD_INCOMPLETE
                continue
            try:
                key = (msg["ifindex"], ipaddress.ip_address(dst).packed)
            except ValueError:
                continue
            fresh[key] = _mac_bytes(lladdr)
        self.cache = fresh
        self.refreshed = time.monotonic()

    def lookup(self, ifindex: int, addr: bytes) -> bytes | None:
        return self.cache.get((ifindex, addr))

    def prompt(self, dev: str, addr: bytes) -> None:
        """Make the kernel resolve addr on dev (at most once a second per address)."""
        key = (socket.if_nametoindex(dev), addr)
        now = time.monotonic()
        if now - self.asked.get(key, 0.0) < 1.0:
            return
        self.asked[key] = now
        ip = ipaddress.ip_address(addr) if len(addr) == 4 else ipaddress.IPv6Address(addr)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        try:
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
                s.setblocking(False)
                s.sendto(b"", (str(ip), 9))
        except OSError:
            pass

    def resolve(self, dev: str, addr: bytes, wait: float) -> bytes | None:
        idx = socket.if_nametoindex(dev)
        deadline = time.monotonic() + wait
        while True:
            self.refresh()
            mac = self.lookup(idx, addr)
            if mac is not None or time.monotonic() > deadline:
                return mac
            self.asked.pop((idx, addr), None)
            self.prompt(dev, addr)
            time.sleep(0.05)

    def close(self):
        self.ipr.close()


def resolve_gateways(cfg, neigh: Neighbours, wait: float, log) -> np.ndarray:
    """uint8[n_uplinks, 6]: each uplink's next-hop MAC (static, or from neighbour discovery).
    An uplink whose link is down at start is left unresolved (zeros) with a warning: it is
    used once it is up and its gateway answers.  A gateway that does not answer on a link
    that is up is a start-up error."""
    from engine.connmgr import IFF_LOWER_UP, IFF_UP, link_flags

    macs = np.zeros((len(cfg.uplinks), 6), np.uint8)
    for i, u in enumerate(cfg.uplinks):
        if u.gateway_mac:
            macs[i] = list(_mac_bytes(u.gateway_mac))
            continue
        if not u.gateway:
            raise UserError(f"uplink {u.name!r} has neither gateway nor gateway_mac; add "
                            f"gateway = \"<next hop address>\" to its [[uplink]] table")
        f = link_flags(u.device)
        if not (f & IFF_UP and f & IFF_LOWER_UP):
            print(f"mmr: warning: uplink {u.name} ({u.device}) is down at start; it will carry "
                  f"flows once it is up and its gateway {u.gateway} answers", file=log, flush=True)
            continue
        mac = neigh.resolve(u.device, ipaddress.ip_address(u.gateway).packed, wait)
        if mac is None:
            raise UserError(f"gateway {u.gateway} of uplink {u.name!r} does not answer neighbour "
                            f"discovery on {u.device}; check the link and the address, or set "
                            f"gateway_mac")
        macs[i] = list(mac)
    return macs


def follow_gateways(engine) -> None:
    """Once a second: a gateway's MAC that changed is followed, a missing one is asked for;
    an uplink whose gateway just became known may be usable now."""
    learnt = False
    for i, u in enumerate(engine.cfg.uplinks):
        if u.gateway_mac or not u.gateway:
            continue
        addr = ipaddress.ip_address(u.gateway).packed
        try:
            mac = engine.neigh.lookup(socket.if_nametoindex(u.device), addr)
        except OSError:
            continue                               # the device is gone; the link monitor knows
        if mac is None:
            engine.neigh.prompt(u.device, addr)
        elif bytes(engine.gw_macs[i]) != mac:
            learnt |= not engine.gw_macs[i].any()
            engine.gw_macs[i] = list(mac)
            engine.say(f"mmr: gateway of {u.name} is now {_mac_text(mac)}")
    if learnt:
        engine.conn.apply()


@contextlib.contextmanager
def ring_batch(ring):
    """(n, buffer, offsets, lengths, stamps) of the blocks the kernel has handed over; the
    blocks go back to the kernel when the with-block ends, however it ends."""
    n, off, ln, ts = ring.batch()
    try:
        yield n, ring.buffer, off, ln, ts
    finally:
        ring.release()


class RowParser:
    """The receive side that needs no flowbase (uplink -> LAN, uplink -> VI): parse a batch
    into a reusable row array.  ``ok`` marks IP frames that may be passed on (parsed whole,
    or behind a next header mmr does not know)."""

    def __init__(self, batch: int, option_type: int):
        self.rows = np.zeros(batch, C.ROW_DTYPE)
        self.reasons = np.zeros(C.N_REASONS, np.uint64)
        self.option_type = option_type

    def parse(self, buf, off, ln, n):
        if n > len(self.rows):
            self.rows = np.zeros(n, C.ROW_DTYPE)
        _parse.parse_batch(buf, off, ln, self.rows, self.option_type, self.reasons)
        reason = self.rows["reason"][:n]
        return self.rows, (reason == 0) | (reason == C.REASON_UNKNOWN_NH)


RING_BLOCK_SIZE = 256 << 10
RING_BLOCKS = 64


class Router(ControlledEngine):
    """``mmr run``: set up, loop, tear down (restoring what it found)."""

    def __init__(self, cfg, batch: int = 256, stats_interval: float = 5.0, log=sys.stderr,
                 resolve_wait: float = 3.0):
        from engine._ring import RxRing, TxSocket, ifindex

        if os.geteuid() != 0:
            raise UserError("mmr run needs root (AF_PACKET rings, nftables, neighbour table); "
                            "run it with sudo or as root")
        if shutil.which("nft") is None:
            raise UserError("nftables ('nft') is not installed; mmr needs it to switch kernel "
                            "forwarding off for its devices (apt-get install nftables)")
        self.cfg = cfg
        self.log = log
        self.stats_interval = stats_interval
        self.devices = [cfg.lan] + [u.device for u in cfg.uplinks]
        for dev in self.devices:
            ifindex(dev)     # UserError naming a missing device
        self.lan = cfg.lan
        self.lan_ifindex = ifindex(cfg.lan)
        self.pipeline = Pipeline(cfg, batch=batch)
        self.pipeline.pre_route = self._pre_route
        self.n_up = len(cfg.uplinks)
        self.macs = {dev: _mac_bytes(open(f"/sys/class/net/{dev}/address").read().strip())
                     for dev in self.devices}
        self.lan_mac = np.frombuffer(self.macs[self.lan], np.uint8)
        self.up_macs = np.array([list(self.macs[u.device]) for u in cfg.uplinks], np.uint8)
        self.lan_mac_table = self.lan_mac.reshape(1, 6).copy()
        addrs = {dev: addresses(dev) for dev in self.devices}
        self.my_addrs = np.frombuffer(b"".join(mapped16(a) for d in self.devices for a in addrs[d])
                                      or bytes(16), dtype="V16")
        self.my_ip = {}       # device -> (first global IPv6, first IPv4): the source of ICMP errors
        for dev in self.devices:
            a6 = [a.packed for a in addrs[dev] if a.version == 6 and not a.is_link_local]
            a4 = [a.packed for a in addrs[dev] if a.version == 4]
            self.my_ip[dev] = (a6[0] if a6 else None, a4[0] if a4 else None)
        # the LAN prefixes as (value, mask) rows over the 16 address bytes, for the uplink side
        nets = [to_mapped(n) for n in cfg.lan_prefixes]
        self.lan_net_value = np.array([list(n.network_address.packed) for n in nets], np.uint8).reshape(-1, 16)
        self.lan_net_mask = np.array([list(n.netmask.packed) for n in nets], np.uint8).reshape(-1, 16)
        self.neigh = Neighbours()
        self.gw_macs = resolve_gateways(cfg, self.neigh, resolve_wait, log)
        # A 2 ms block timeout bounds the latency a partly filled block adds; since a block is
        # handed over after 2 ms however full, the ring's slack is counted in blocks: 64 blocks
        # of 256 KiB (16 MiB a device) ride out a >= 128 ms stall of this process.
        ring = dict(block_size=RING_BLOCK_SIZE, block_count=RING_BLOCKS, timeout_ms=2)
        self.lan_rx = RxRing(self.lan, **ring)
        self.up_rx = [RxRing(u.device, **ring) for u in cfg.uplinks]
        self.lan_tx = TxSocket(self.lan)
        self.up_tx = [TxSocket(u.device, qdisc_bypass=u.qdisc_bypass) for u in cfg.uplinks]
        self.host_macs: dict[bytes, int] = {}
        self.host_table = np.zeros((4096, 6), np.uint8)
        self.counters = {"lan_rx": 0, "up_rx": 0, "to_uplinks": 0, "to_lan": 0, "kernel": 0,
                         "hop_limit": 0, "time_exceeded_sent": 0, "no_neighbour": 0,
                         "oversize": 0, "too_big_sent": 0, "ring_drops": 0}
        self.up_parser = RowParser(batch, cfg.option_type)
        self.stop = False
        self.nft_installed = False
        self.coalescing_changed: dict[str, list[str]] = {}
        self.warned_truncated: set[str] = set()
        self.warned_csum: set[str] = set()
        self.mtu = {dev: int(open(f"/sys/class/net/{dev}/mtu").read()) for dev in self.devices}
        self.up_mtu = np.array([self.mtu[u.device] for u in cfg.uplinks], np.int64)
        self.started = time.time()
        self.reloads = 0
        self.reload_requested = False
        self.control = ControlServer(cfg.monitor["control_socket"], self.handle_control)
        self.conn = ConnectionManager(self, cfg, log)
        self.metrics = None
        if cfg.monitor["metrics_listen"]:
            from engine.metrics import Metrics
            self.metrics = Metrics(cfg.monitor["metrics_listen"])

    # ------------------------------------------------------------------ kernel forwarding
    def kernel_forwarding_off(self) -> None:
        devs = ", ".join(f'"{d}"' for d in self.devices)
        rules = (f"table inet {NFT_TABLE} {{\n chain forward {{\n  type filter hook forward priority -5; policy accept;\n"
                 f"  iifname {{ {devs} }} oifname {{ {devs} }} counter drop\n }}\n}}\n")
        subprocess.run(["nft", "delete", "table", "inet", NFT_TABLE], capture_output=True)
        p = subprocess.run(["nft", "-f", "-"], input=rules, capture_output=True, text=True)
        if p.returncode != 0:
            raise UserError(f"cannot install the nftables table that keeps the kernel from forwarding "
                            f"({p.stderr.strip()}); check that nftables works here")
        self.nft_installed = True

    # ------------------------------------------------------------------ offloads
    def coalescing_off(self) -> None:
        """GRO/LRO build super-packets bigger than the MTU; switch them off on mmr's devices
        (with a warning) and switch them back on at exit."""
        for dev in self.devices:
            on = coalescing_on(dev)
            if on is None:
                print(f"mmr: warning: cannot read the offloads of {dev} (ethtool missing?); "
                      f"super-packets larger than the egress MTU are dropped and counted as "
                      f"'oversize'", file=self.log, flush=True)
            elif on:
                if set_features(dev, on, "off"):
                    self.coalescing_changed[dev] = on
                    print(f"mmr: warning: switched {', '.join(on)} off on {dev} while mmr runs "
                          f"(receive coalescing makes super-packets a router must not forward)",
                          file=self.log, flush=True)
                else:
                    print(f"mmr: warning: could not switch {', '.join(on)} off on {dev}; "
                          f"super-packets will be dropped and counted as 'oversize'",
                          file=self.log, flush=True)

    def coalescing_restore(self) -> None:
        for dev, feats in self.coalescing_changed.items():
            set_features(dev, feats, "on")
        self.coalescing_changed = {}

    def _read_ring_drops(self) -> None:
        """PACKET_STATISTICS resets on read: accumulate the kernel's ring-full drops."""
        for r in [self.lan_rx] + self.up_rx:
            self.counters["ring_drops"] += r.kernel_stats()["drops"]

    def _watch_rings(self) -> None:
        """Say once per device when frames are being dropped as too large, or arrive with
        unfinished checksums (a sender's TX offload), and what to change."""
        for r in [self.lan_rx] + self.up_rx:
            if r.truncated and r.ifname not in self.warned_truncated:
                self.warned_truncated.add(r.ifname)
                print(f"mmr: warning: {r.truncated} frame(s) on {r.ifname} larger than the ring's "
                      f"frame size were dropped (segmentation offload on the sending peer? "
                      f"'ethtool -K <peer> tso off gso off')", file=self.log, flush=True)
            if r.csum_not_ready and r.ifname not in self.warned_csum:
                self.warned_csum.add(r.ifname)
                print(f"mmr: warning: frames on {r.ifname} carry unfinished checksums (TX checksum "
                      f"offload on a local or veth peer; 'ethtool -K <peer> tx off')",
                      file=self.log, flush=True)

    def kernel_forwarding_restore(self) -> None:
        if self.nft_installed:
            subprocess.run(["nft", "delete", "table", "inet", NFT_TABLE], capture_output=True)
            self.nft_installed = False

    # ------------------------------------------------------------------ LAN -> uplinks
    def _pre_route(self, rows, out, n, buf, offsets):
        dst = rows["dst"][:n]
        fam = rows["family"][:n]
        local = (dst[:, 0] == 0xFF) | ((dst[:, 0] == 0xFE) & ((dst[:, 1] & 0xC0) == 0x80))
        local |= (fam == 4) & (dst[:, 12] >= 224)
        local |= np.isin(dst.copy().view("V16").ravel(), self.my_addrs)
        dmac = np.asarray(buf)[offsets[:n, None] + np.arange(6)]
        local |= (dmac != self.lan_mac).any(axis=1)
        sel = local & (out[:n] == -1)
        out[:n][sel] = KERNEL

    def lan_batch(self) -> int:
        with ring_batch(self.lan_rx) as (n, buf, off, ln, ts):
            if n == 0:
                return 0
            pipe = self.pipeline
            if n > pipe.cap:
                pipe._alloc(n)
            out = pipe.process(buf, off, ln, ts)
            self.counters["lan_rx"] += n
            self.counters["kernel"] += int((out == KERNEL).sum())
            fwd = out >= 0
            if not fwd.any():
                return n
            rows = pipe.rows
            l3len = ln.astype(np.int64) - rows["l3_off"][:n]
            big = fwd & (l3len > self.up_mtu[np.maximum(out, 0)])
            if big.any():
                self._too_big(buf, off, ln, rows, np.flatnonzero(big), self.up_mtu[out[big]],
                              self.lan, self.lan_tx)
                fwd &= ~big
            idx = np.where(fwd, out, -1).astype(np.int16)
            fwd &= self._rewrite(buf, off, ln, rows, idx, self.up_macs, idx, self.gw_macs, n,
                                 self.lan, self.lan_tx)
            for u in range(self.n_up):
                sel = np.flatnonzero(fwd & (out == u))
                if len(sel):
                    self.up_tx[u].send(buf, off, ln, sel)
                    self.counters["to_uplinks"] += len(sel)
        return n

    def _rewrite(self, buf, off, ln, rows, src_idx, src_macs, dst_idx, dst_macs, n, back_dev, back_tx):
        """engine._rewrite over the batch; frames whose hop limit ran out are answered with
        time exceeded out of back_dev (where they came from).  Returns the frames to send."""
        verdict = np.zeros(n, np.uint8)
        if _rewrite.rewrite(buf, off, ln, rows, src_idx, src_macs, dst_idx, dst_macs, verdict, n):
            self._time_exceeded(buf, off, ln, rows, verdict, back_dev, back_tx)
        return (src_idx >= 0) & (verdict == 0)

    def _too_big(self, buf, off, ln, rows, idx, mtus, dev, tx):
        """Drop frames that do not fit the egress MTU; answer each (at most 64 a batch) with
        ICMPv6 packet too big, or ICMP fragmentation needed when IPv4 says don't fragment
        (mmr does not fragment IPv4)."""
        self.counters["oversize"] += len(idx)
        mac = self.macs[dev]
        ip6, ip4 = self.my_ip[dev]
        frames = []
        for i, mtu in zip(idx[:64].tolist(), mtus[:64].tolist()):
            o = int(off[i])
            l3 = int(rows[i]["l3_off"])
            fam = int(rows[i]["family"])
            if fam == 4 and not buf[o + l3 + 6] & 0x40:
                continue
            fr = bytes(buf[o:o + min(int(ln[i]), l3 + 1280)])
            reply = packet_too_big(fr, l3, fam, mac, mtu, ip6, ip4)
            if reply is not None:
                frames.append(reply)
        if frames:
            self.counters["too_big_sent"] += tx.send_frames(frames)

    def _time_exceeded(self, buf, off, ln, rows, verdict, dev, tx):
        """Count the frames whose hop limit ran out; answer (at most 64 a batch) out of dev."""
        ip6, ip4 = self.my_ip[dev]
        frames = []
        for i in np.flatnonzero(verdict == 1):
            self.counters["hop_limit"] += 1
            self.pipeline.reasons[C.REASON_HOP_LIMIT] += 1
            if len(frames) == 64:
                continue
            o = int(off[i])
            reply = time_exceeded(bytes(buf[o:o + int(ln[i])]), int(rows[i]["l3_off"]), int(rows[i]["family"]),
                                  self.macs[dev], ip6, ip4)
            if reply is not None:
                frames.append(reply)
        if frames:
            self.counters["time_exceeded_sent"] += tx.send_frames(frames)

    # ------------------------------------------------------------------ uplinks -> LAN
    def uplink_batch(self, u: int) -> int:
        with ring_batch(self.up_rx[u]) as (n, buf, off, ln, ts):
            if n == 0:
                return 0
            self.counters["up_rx"] += n
            rows, ok = self.up_parser.parse(buf, off, ln, n)
            dmac = np.asarray(buf)[off[:, None] + np.arange(6)]
            ok &= (dmac == self.up_macs[u]).all(axis=1)
            dst = rows["dst"][:n]
            ok &= ((dst[:, None, :] & self.lan_net_mask) == self.lan_net_value).all(axis=2).any(axis=1)
            ok &= ~np.isin(dst.copy().view("V16").ravel(), self.my_addrs)
            dev, tx = self.cfg.uplinks[u].device, self.up_tx[u]
            l3len = ln.astype(np.int64) - rows["l3_off"][:n]
            big = ok & (l3len > self.mtu[self.lan])
            if big.any():
                self._too_big(buf, off, ln, rows, np.flatnonzero(big),
                              np.full(int(big.sum()), self.mtu[self.lan]), dev, tx)
                ok &= ~big
            if not ok.any():
                return n
            src_idx = np.full(n, -1, np.int16)
            dst_idx = np.zeros(n, np.int16)
            sel = np.flatnonzero(ok)
            # one step per distinct LAN host in the batch, not per packet
            hosts, inverse = np.unique(dst[sel].copy().view("V16").ravel(), return_inverse=True)
            if len(hosts) > len(self.host_table):
                self.host_table = np.zeros((2 * len(hosts), 6), np.uint8)
            if len(self.host_macs) + len(hosts) > len(self.host_table):
                self.host_macs.clear()        # rebuilt from the neighbour cache as needed
            slot = np.array([self._host_slot(bytes(h)) for h in hosts], np.int16)
            k = slot[inverse]
            known = k >= 0
            src_idx[sel[known]] = 0
            dst_idx[sel[known]] = k[known]
            self.counters["no_neighbour"] += int((~known).sum())
            send = np.flatnonzero(self._rewrite(buf, off, ln, rows, src_idx, self.lan_mac_table, dst_idx,
                                                self.host_table, n, dev, tx))
            if len(send):
                self.lan_tx.send(buf, off, ln, send)
                self.counters["to_lan"] += len(send)
        return n

    def _host_slot(self, a: bytes) -> int:
        """Row of host_table holding the LAN MAC of address a (16 bytes), -1 if unknown yet."""
        k = self.host_macs.get(a)
        if k is not None:
            return k
        key = a[12:] if a[:12] == bytes(10) + b"\xff\xff" else a
        mac = self.neigh.lookup(self.lan_ifindex, key)
        if mac is None and time.monotonic() - self.neigh.refreshed > 0.05:
            self.neigh.refresh()          # learnt since the last read?
            mac = self.neigh.lookup(self.lan_ifindex, key)
        if mac is None:
            self.neigh.prompt(self.lan, key)
            return -1
        k = len(self.host_macs)
        self.host_macs[a] = k
        self.host_table[k] = list(mac)
        return k

    # ------------------------------------------------------------------ loop
    def summary_line(self) -> str:
        c = self.counters
        up = self.pipeline.uplink_packets
        per = " ".join(f"{u.name}={int(up[i])}" for i, u in enumerate(self.cfg.uplinks))
        drops = {C.REASON_NAMES[k]: int(v) for k, v in enumerate(self.pipeline.reasons)
                 if v and C.REASON_ACTION[k] == "drop"}
        truncated = self.lan_rx.truncated + sum(r.truncated for r in self.up_rx)
        return (f"mmr: lan_rx={c['lan_rx']} up_rx={c['up_rx']} to_uplinks={c['to_uplinks']} ({per}) "
                f"to_lan={c['to_lan']} kernel={c['kernel']} flows={len(self.pipeline.flows)} "
                f"hop_limit={c['hop_limit']} oversize={c['oversize']} no_neighbour={c['no_neighbour']} "
                f"truncated={truncated} ring_drops={c['ring_drops']} "
                f"tx_errors={sum(t.errors for t in [self.lan_tx] + self.up_tx)} "
                f"drops={drops or 0}")

    def run(self, duration: float | None = None) -> dict:
        old = self.install_signals()
        try:
            self.coalescing_off()
            self.kernel_forwarding_off()
            poller = select.poll()
            fds = {self.lan_rx.fileno(): None}
            poller.register(self.lan_rx.fileno(), select.POLLIN)
            for u, r in enumerate(self.up_rx):
                fds[r.fileno()] = u
                poller.register(r.fileno(), select.POLLIN)
            side = dict(self.conn.fds())            # netlink and probe sockets
            side[self.control.fileno()] = ("control", None)
            for fd in side:
                poller.register(fd, select.POLLIN)
            start = time.monotonic()
            last_stats = last_neigh = start
            print(f"mmr: forwarding {self.lan} -> " + ", ".join(
                f"{u.name}({u.device})" for u in self.cfg.uplinks) + "; kernel forwarding off for these devices",
                file=self.log, flush=True)
            while not self.stop:
                ready = poller.poll(25)
                for fd, _ in ready:
                    if fd in side:
                        what = side[fd]
                        if what[0] == "control":
                            self.control.serve_one()
                        else:
                            self.conn.readable(what)
                        continue
                    u = fds[fd]
                    if u is None:
                        self.lan_batch()
                    else:
                        self.uplink_batch(u)
                now = time.monotonic()
                self.conn.tick(now)
                if self.reload_requested:
                    self.reload_requested = False
                    res = self.reload()
                    self.say(f"mmr: SIGHUP: {res['message']}")
                if now - last_neigh >= 1.0:
                    self.neigh.refresh()
                    follow_gateways(self)
                    self.host_macs.clear()
                    self.pipeline.expire(time.time())
                    self._watch_rings()
                    self._read_ring_drops()
                    if self.metrics is not None:
                        self.metrics.publish(self.snapshot())
                    last_neigh = now
                if self.stats_interval and now - last_stats >= self.stats_interval:
                    print(self.summary_line(), file=self.log, flush=True)
                    last_stats = now
                if duration is not None and now - start >= duration:
                    break
        finally:
            self.kernel_forwarding_restore()
            self.coalescing_restore()
            self._read_ring_drops()
            self.restore_signals(old)
            print(self.summary_line(), file=self.log, flush=True)
            self.close()
        return dict(self.counters, uplinks={u.name: int(self.pipeline.uplink_packets[i])
                                            for i, u in enumerate(self.cfg.uplinks)})

    # ------------------------------------------------------------------ control
    def close(self):
        if self.metrics is not None:
            self.metrics.close()
        self.control.close()
        self.conn.close()
        for r in [self.lan_rx] + self.up_rx:
            r.close()
        for t in [self.lan_tx] + self.up_tx:
            t.close()
        self.neigh.close()
