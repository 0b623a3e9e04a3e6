"""``mmr host``: the virtual interface of draft-hong-mif on a host with several interfaces.

    stack --> vi0 (TUN) --read_batch--> parse -> classify -> flowbase -> select
                                        --> Ethernet header (interface MAC -> its gateway's MAC)
                                        --> TxSocket on the chosen physical interface
    physical interfaces --RxRing--> parse --> for the VI's addresses --> write_batch --> vi0

Applications bind to the VI's stable address and never see which physical interface carries
their packets; the connection manager (engine/connmgr.py) watches the interfaces and moves
flows when one fails, so open TCP connections continue.

On start mmr creates the TUN device, gives it the addresses and routes of [host], and keeps
the kernel from also delivering VI-addressed packets that arrive on the physical interfaces
(an nftables table 'inet mmrhost').  On stop the TUN device goes (its addresses and routes
with it) and the table is removed: the host is as it was.
"""
from __future__ import annotations

import ipaddress
import os
import select
import shutil
import subprocess
import sys
import time

import numpy as np

from engine.connmgr import ConnectionManager
from engine.control import ControlledEngine, ControlServer
from engine.errors import UserError
from engine.pipeline import Pipeline
from engine.inet import mapped16
from engine.netns import addresses
from engine.router import Neighbours, RowParser, _mac_bytes, follow_gateways, resolve_gateways, ring_batch

NFT_TABLE = "mmrhost"


class Host(ControlledEngine):
    mode = "host"
    default_policy = "default-host.toml"

    def __init__(self, cfg, batch: int = 256, stats_interval: float = 5.0, log=sys.stderr):
        from engine._ring import RxRing, TxSocket, ifindex
        from engine._tun import Tun

        if os.geteuid() != 0:
            raise UserError("mmr host needs root (TUN device, AF_PACKET, routes); run it as root")
        if shutil.which("nft") is None:
            raise UserError("nftables ('nft') is not installed; mmr host needs it (apt-get install nftables)")
        h = cfg.host
        self.cfg, self.log, self.stats_interval = cfg, log, stats_interval
        for u in cfg.uplinks:
            ifindex(u.device)
        if os.path.exists(f"/sys/class/net/{h['vi']}"):
            raise UserError(f"a device named {h['vi']!r} already exists; remove it or set host.vi")
        self.vi_addrs = [ipaddress.ip_interface(a) for a in h["addresses"]]
        for u in cfg.uplinks:
            clash = {a.ip for a in self.vi_addrs} & set(addresses(u.device))
            if clash:
                raise UserError(f"address {sorted(map(str, clash))[0]} of host.addresses is already on "
                                f"{u.device}; the virtual interface needs addresses of its own")
        self.neigh = Neighbours()
        self.gw_macs = resolve_gateways(cfg, self.neigh, 3.0, log)
        self.up_macs = np.array([list(_mac_bytes(open(f"/sys/class/net/{u.device}/address").read().strip()))
                                 for u in cfg.uplinks], np.uint8)
        self.pipeline = Pipeline(cfg, batch=batch)
        mtu = min(int(open(f"/sys/class/net/{u.device}/mtu").read()) for u in cfg.uplinks)
        self.mtu = min(mtu, h["mtu"]) if h["mtu"] else mtu
        self.tun = Tun(h["vi"], capacity=batch, mtu=self.mtu)
        self.nft_installed = False
        try:
            self._configure_vi()
            self.up_rx = [RxRing(u.device, block_size=256 << 10, block_count=64, timeout_ms=2)
                          for u in cfg.uplinks]
            self.up_tx = [TxSocket(u.device, qdisc_bypass=u.qdisc_bypass) for u in cfg.uplinks]
            self.up_parser = RowParser(batch, cfg.option_type)
            self.my16 = np.frombuffer(b"".join(mapped16(a.ip) for a in self.vi_addrs), dtype="V16")
            self.counters = {"vi_rx": 0, "to_uplinks": 0, "up_rx": 0, "to_vi": 0, "no_uplink": 0}
            self.stop = False
            self.started = time.time()
            self.reloads = 0
            self.reload_requested = False
            self.control = None
            self.metrics = None
            self.conn = ConnectionManager(self, cfg, log)
            self.control = ControlServer(cfg.monitor["control_socket"], self.handle_control)
            if cfg.monitor["metrics_listen"]:
                from engine.metrics import Metrics
                self.metrics = Metrics(cfg.monitor["metrics_listen"])
        except BaseException:
            if getattr(self, "control", None) is not None:
                self.control.close()
            self._teardown()
            raise

    # ------------------------------------------------------------------ set-up / tear-down
    def _configure_vi(self) -> None:
        h, vi = self.cfg.host, self.cfg.host["vi"]
        subprocess.run(["ip", "link", "set", vi, "mtu", str(self.mtu), "up"], check=True, capture_output=True)
        for a in self.vi_addrs:
            extra = ["nodad"] if a.version == 6 else []
            p = subprocess.run(["ip", "addr", "add", str(a), "dev", vi, *extra], capture_output=True, text=True)
            if p.returncode != 0:
                raise UserError(f"cannot put {a} on {vi} ({p.stderr.strip()})")
        routes = []
        for r in h["routes"]:
            if r == "default":       # for each family the VI has an address of
                routes += [("-6", r)] * any(a.version == 6 for a in self.vi_addrs)
                routes += [("-4", r)] * any(a.version == 4 for a in self.vi_addrs)
            else:
                routes.append(("-6" if ":" in r else "-4", r))
        for fam, r in routes:
            p = subprocess.run(["ip", fam, "route", "add", r, "dev", vi, "metric", str(h["route_metric"])],
                               capture_output=True, text=True)
            if p.returncode != 0:
                raise UserError(f"cannot route {r} via {vi} ({p.stderr.strip()}); another route with "
                                f"metric {h['route_metric']}? change host.route_metric")
        devs = ", ".join(f'"{u.device}"' for u in self.cfg.uplinks)
        a6 = ", ".join(str(a.ip) for a in self.vi_addrs if a.version == 6)
        a4 = ", ".join(str(a.ip) for a in self.vi_addrs if a.version == 4)
        rules = "".join([
            f"  iifname {{ {devs} }} ip6 daddr {{ {a6} }} drop\n" if a6 else "",
            f"  iifname {{ {devs} }} ip daddr {{ {a4} }} drop\n" if a4 else "",
        ])
        text = (f"table inet {NFT_TABLE} {{\n chain pre {{\n  type filter hook prerouting priority -300; "
                f"policy accept;\n{rules} }}\n}}\n")
        subprocess.run(["nft", "delete", "table", "inet", NFT_TABLE], capture_output=True)
        p = subprocess.run(["nft", "-f", "-"], input=text, capture_output=True, text=True)
        if p.returncode != 0:
            raise UserError(f"cannot install the nftables table of host mode ({p.stderr.strip()})")
        self.nft_installed = True

    def _teardown(self) -> None:
        if self.nft_installed:
            subprocess.run(["nft", "delete", "table", "inet", NFT_TABLE], capture_output=True)
            self.nft_installed = False
        self.tun.close()                      # the TUN device, its addresses and routes go

    # ------------------------------------------------------------------ data path
    def vi_batch(self) -> int:
        n, buf, off, ln = self.tun.read_batch()
        if n == 0:
            return 0
        pipe = self.pipeline
        if n > pipe.cap:
            pipe._alloc(n)
        out = pipe.process(buf, off, ln, np.full(n, time.time()))
        self.counters["vi_rx"] += n
        fwd = np.flatnonzero(out >= 0)
        self.counters["no_uplink"] += n - len(fwd)
        if len(fwd):
            u = out[fwd].astype(np.intp)
            b = np.asarray(buf)
            cols = off[fwd, None] + np.arange(6)
            b[cols] = self.gw_macs[u]                 # destination: the interface's gateway
            b[cols + 6] = self.up_macs[u]             # source: the interface itself
            for k in range(len(self.cfg.uplinks)):
                sel = fwd[u == k]
                if len(sel):
                    self.up_tx[k].send(buf, off, ln, sel.astype(np.int64))
                    self.counters["to_uplinks"] += len(sel)
        return n

    def uplink_batch(self, k: int) -> int:
        with ring_batch(self.up_rx[k]) as (n, buf, off, ln, ts):
            if n == 0:
                return 0
            self.counters["up_rx"] += n
            rows, ok = self.up_parser.parse(buf, off, ln, n)
            ok &= np.isin(rows["dst"][:n].copy().view("V16").ravel(), self.my16)
            sel = np.flatnonzero(ok)
            if len(sel):
                l3 = rows["l3_off"][:n].astype(np.int64)
                self.tun.write_batch(buf, off, ln, l3, sel.astype(np.int64))
                self.counters["to_vi"] += len(sel)
        return n

    # ------------------------------------------------------------------ loop
    def summary_line(self) -> str:
        c = self.counters
        up = self.pipeline.uplink_packets
        per = " ".join(f"{u.name}={int(up[i])}" for i, u in enumerate(self.cfg.uplinks))
        return (f"mmr host: vi_rx={c['vi_rx']} to_uplinks={c['to_uplinks']} ({per}) up_rx={c['up_rx']} "
                f"to_vi={c['to_vi']} no_uplink={c['no_uplink']} flows={len(self.pipeline.flows)} "
                f"tun_write_errors={self.tun.tx_errors}")

    def run(self, duration: float | None = None) -> None:
        old = self.install_signals()
        try:
            poller = select.poll()
            fds = {self.tun.fileno(): ("vi", None)}
            for k, r in enumerate(self.up_rx):
                fds[r.fileno()] = ("up", k)
            fds.update(self.conn.fds())
            fds[self.control.fileno()] = ("control", None)
            for fd in fds:
                poller.register(fd, select.POLLIN)
            start = last_stats = last_house = time.monotonic()
            vi = self.cfg.host["vi"]
            self.say(f"mmr host: {vi} up ({', '.join(str(a) for a in self.vi_addrs)}; routes "
                     f"{', '.join(self.cfg.host['routes'])}) over " +
                     ", ".join(f"{u.name}({u.device})" for u in self.cfg.uplinks))
            while not self.stop:
                for fd, _ in poller.poll(25):
                    kind, k = fds[fd]
                    if kind == "vi":
                        self.vi_batch()
                    elif kind == "up":
                        self.uplink_batch(k)
                    elif kind == "control":
                        self.control.serve_one()
                    else:
                        self.conn.readable((kind, k))
                now = time.monotonic()
                self.conn.tick(now)
                if self.reload_requested:
                    self.reload_requested = False
                    self.say(f"mmr host: SIGHUP: {self.reload()['message']}")
                if now - last_house >= 1.0:
                    self.neigh.refresh()
                    follow_gateways(self)
                    self.pipeline.expire(time.time())
                    if self.metrics is not None:
                        self.metrics.publish(self.snapshot())
                    last_house = now
                if self.stats_interval and now - last_stats >= self.stats_interval:
                    self.say(self.summary_line())
                    last_stats = now
                if duration is not None and now - start >= duration:
                    break
        finally:
            self.restore_signals(old)
            self.say(self.summary_line())
            self.close()

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        self.control.close()
        self.conn.close()
        for r in self.up_rx:
            r.close()
        for t in self.up_tx:
            t.close()
        self.neigh.close()
        self._teardown()
