"""The connection manager of ``mmr run``: is each uplink usable, how good is it, and what
happens to its flows when that changes.

    netlink (RTMGRP_LINK, address groups) --events-->  UplinkHealth.link_up
    ICMPv6/ICMP echo out of each uplink   --RTT-->     UplinkHealth.probe_ok, loss, jitter, delay
                                                        |
                      usable mask / measured V_n  ----> Selector.update  (new flows)
                      an uplink went unusable     ----> FlowTable.rebind (its flows only, one call)
                      failback = "return"         ----> FlowTable.rebind (flows back to the best)

Everything runs in the router's poll loop: the netlink socket and one raw socket per uplink
are registered there, and ``tick`` runs on every wake-up (at least every 25 ms).
"""
from __future__ import annotations

import collections
import ipaddress
import os
import socket
import struct
import time

import numpy as np

from engine import constants as C
from engine.config import characteristics_matrix
from engine.inet import checksum
from engine.netns import addresses

RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR = 16, 17, 20, 21
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
ICMP6_FILTER = 1
MAX_HOLD_S = 60.0
MIN_TIMEOUT_S = 0.25
EXPIRY_SCAN_S = 0.01


class LinkEvents:
    """Link and address changes from the kernel as events (a raw rtnetlink socket)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[tuple[str, int, int]]:
        """[(kind, ifindex, flags)]: kind 'link' (flags = IFF_*), 'gone' or 'addr'."""
        out = []
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:            # ENOBUFS: events were lost; the caller re-reads state
                out.append(("resync", 0, 0))
                continue
            off = 0
            while off + 16 <= len(data):
                length, mtype = struct.unpack_from("=IH", data, off)
                if length < 16:
                    break
                body = off + 16
                if mtype in (RTM_NEWLINK, RTM_DELLINK) and body + 16 <= len(data):
                    _, _, _, index, flags = struct.unpack_from("=BBHiI", data, body)
                    out.append(("gone" if mtype == RTM_DELLINK else "link", index, flags))
                elif mtype in (RTM_NEWADDR, RTM_DELADDR) and body + 8 <= len(data):
                    index = struct.unpack_from("=I", data, body + 4)[0]
                    out.append(("addr", index, 0))
                off += (length + 3) & ~3

    def close(self):
        self.sock.close()


def link_flags(dev: str) -> int:
    try:
        return int(open(f"/sys/class/net/{dev}/flags").read(), 16) | (
            IFF_LOWER_UP if open(f"/sys/class/net/{dev}/carrier").read().strip() == "1" else 0)
    except OSError:
        return 0          # gone, or carrier unreadable because the device is down


class Prober:
    """Echo requests to each target out of one device (SO_BINDTODEVICE); replies matched by
    identifier and sequence number."""

    def __init__(self, dev: str, targets: list[str], ident: int):
        self.dev, self.ident, self.seq = dev, ident & 0xFFFF, 0
        self.targets = [ipaddress.ip_address(t) for t in targets]
        self.socks = {}
        for fam in {t.version for t in self.targets}:
            if fam == 6:
                s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
                block = [0xFFFFFFFF] * 8
                block[129 >> 5] &= ~(1 << (129 & 31))          # pass echo replies only
                s.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *block))
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
            s.setblocking(False)
            self.socks[fam] = s
        self.pending: dict[int, float] = {}     # seq -> send time

    def fds(self):
        return [s.fileno() for s in self.socks.values()]

    def send(self, now: float) -> None:
        for t in self.targets:
            self.seq = (self.seq + 1) & 0xFFFF
            if t.version == 6:
                msg = struct.pack("!BBHHH", 128, 0, 0, self.ident, self.seq) + b"mmr-probe"
            else:
                body = struct.pack("!BBHHH", 8, 0, 0, self.ident, self.seq) + b"mmr-probe"
                msg = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
            try:
                self.socks[t.version].sendto(msg, (str(t), 0))
                self.pending[self.seq] = now
            except OSError:
                self.pending[self.seq] = now     # unreachable now: it will count as lost

    def receive(self, now: float) -> list[float]:
        """RTTs (seconds) of the replies that arrived."""
        rtts = []
        for fam, s in self.socks.items():
            while True:
                try:
                    data = s.recv(2048)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                if fam == 4:
                    data = data[(data[0] & 0x0F) * 4:]
                    want = 0
                else:
                    want = 129
                if len(data) < 8 or data[0] != want:
                    continue
                ident, seq = struct.unpack_from("!HH", data, 4)
                if ident == self.ident and seq in self.pending:
                    rtts.append(now - self.pending.pop(seq))
        return rtts

    def expired(self, now: float, timeout: float) -> int:
        old = [q for q, t in self.pending.items() if now - t > timeout]
        for q in old:
            del self.pending[q]
        return len(old)

    def close(self):
        for s in self.socks.values():
            s.close()


def qdisc_backlog(dev: str) -> int | None:
    """Bytes queued in the device's root qdisc (tc -s -j), None when unreadable."""
    import json
    import subprocess

    p = subprocess.run(["tc", "-s", "-j", "qdisc", "show", "dev", dev], capture_output=True, text=True)
    if p.returncode != 0:
        return None
    try:
        return sum(int(q.get("backlog", 0)) for q in json.loads(p.stdout) if q.get("root"))
    except ValueError:
        return None


class UplinkHealth:
    """One uplink's state: link, probes (with hysteresis and hold-down), measurements."""

    def __init__(self, index: int, name: str, dev: str, window: int):
        self.index, self.name, self.dev = index, name, dev
        self.link_up = True
        self.probe_ok = True
        self.fails = 0
        self.successes = 0
        self.down_since: float | None = None
        self.up_since: float = time.monotonic()
        self.hold = 0.0
        self.changes = 0
        self.reason = ""
        self.results = collections.deque(maxlen=window)   # RTT seconds, or None for lost
        self.min_rtt: float | None = None
        self.measured: dict[str, float] = {}
        self.timeout_s = 1.0                   # set by the manager from probe_timeout_ms and RTTs
        self.delay_source = "probe RTT - min RTT"

    @property
    def usable(self) -> bool:
        return self.link_up and self.probe_ok

    def window_stats(self) -> dict[str, float]:
        rtts = [r for r in self.results if r is not None]
        out = {}
        if self.results:
            out["loss"] = 1 - len(rtts) / len(self.results)
        if rtts:
            out["rtt_ms"] = 1000 * sum(rtts) / len(rtts)
            out["queueing_delay"] = 1000 * (sum(rtts) / len(rtts) - (self.min_rtt or 0.0))
        if len(rtts) >= 2:
            out["jitter"] = 1000 * sum(abs(a - b) for a, b in zip(rtts, rtts[1:])) / (len(rtts) - 1)
        return out


class ConnectionManager:
    def __init__(self, router, cfg, log):
        self.router, self.cfg, self.log = router, cfg, log
        m = cfg.monitor
        self.m = m
        self.health = [UplinkHealth(i, u.name, u.device, m["window"]) for i, u in enumerate(cfg.uplinks)]
        for h in self.health:
            h.link_up = self._link_ok(h.dev)
        self.events = LinkEvents()
        self.ifindex = {socket.if_nametoindex(u.device): i for i, u in enumerate(cfg.uplinks)}
        self.probers: list[Prober | None] = []
        base = (os.getpid() * 7) & 0xFFFF
        for i, u in enumerate(cfg.uplinks):
            ok = m["probes"] and u.probe_targets
            self.probers.append(Prober(u.device, u.probe_targets, base + i) if ok else None)
        self.next_probe = time.monotonic()
        self.next_expiry_scan = 0.0
        for h in self.health:
            h.timeout_s = self.timeout(h)
        self.failback_at: float | None = None
        self.moves: list[dict] = []          # the last failovers, for status
        self.last_measure = 0.0
        self.apply(initial=True)

    # ---------------------------------------------------------------- poll integration
    def fds(self) -> dict[int, object]:
        out = {self.events.fileno(): ("link", None)}
        for i, p in enumerate(self.probers):
            if p is not None:
                for fd in p.fds():
                    out[fd] = ("probe", i)
        return out

    def readable(self, what) -> None:
        kind, i = what
        now = time.monotonic()
        if kind == "link":
            changed = False
            for ev, index, flags in self.events.read():
                if ev == "resync":
                    for h in self.health:
                        changed |= self._set_link(h, self._link_ok(h.dev), "link state re-read")
                    continue
                u = self.ifindex.get(index)
                if u is None:
                    continue
                h = self.health[u]
                if ev == "gone":
                    changed |= self._set_link(h, False, "device removed")
                elif ev == "link":
                    up = bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)
                    ok = up and self._has_address(h.dev)      # up again, but is it addressed?
                    changed |= self._set_link(h, ok, "link down" if not flags & IFF_UP else
                                              "no carrier" if not up else "no address")
                elif ev == "addr":
                    ok = self._link_ok(h.dev)
                    changed |= self._set_link(h, ok, "address removed" if not ok else "address added")
            if changed:
                self.apply()
        else:
            h = self.health[i]
            for rtt in self.probers[i].receive(now):
                self._probe_result(h, rtt, now)

    def _link_ok(self, dev: str) -> bool:
        """Admin up, carrier, and an address beyond link-local (the uplink's own)."""
        f = link_flags(dev)
        if not (f & IFF_UP and f & IFF_LOWER_UP):
            return False
        return self._has_address(dev)

    @staticmethod
    def _has_address(dev: str) -> bool:
        return any(not a.is_link_local for a in addresses(dev))

    def _set_link(self, h: UplinkHealth, ok: bool, why: str) -> bool:
        if ok == h.link_up:
            return False
        h.link_up = ok
        if not ok:
            h.reason = why
        return True

    # ---------------------------------------------------------------- probes
    def _probe_result(self, h: UplinkHealth, rtt: float | None, now: float) -> None:
        h.results.append(rtt)
        h.timeout_s = self.timeout(h)
        if rtt is None:
            h.fails += 1
            h.successes = 0
            if h.probe_ok and h.fails >= self.m["down_after"]:
                h.probe_ok = False
                if h.link_up:                   # a dead link explains lost probes already
                    h.reason = f"{h.fails} probes lost"
                self.apply()
        else:
            h.min_rtt = rtt if h.min_rtt is None else min(h.min_rtt, rtt)
            h.fails = 0
            h.successes += 1
            if (not h.probe_ok and h.successes >= self.m["up_after"]
                    and (h.down_since is None or now - h.down_since >= h.hold)):
                h.probe_ok = True
                if h.link_up:
                    h.reason = ""
                self.apply()

    def timeout(self, h: UplinkHealth) -> float:
        """How long a probe may take: 3 x the mean RTT of the window (at least 250 ms, at
        most probe_timeout_ms), so a fast link is judged fast and a slow one fairly."""
        top = self.m["probe_timeout_ms"] / 1000
        rtts = [r for r in h.results if r is not None]
        if not rtts:
            return top
        return min(top, max(MIN_TIMEOUT_S, 3 * sum(rtts) / len(rtts)))

    def tick(self, now: float) -> None:
        """Runs on every wake-up of the loop (once a batch under load): the expiry scan is
        done at most every 10 ms, with each uplink's timeout kept from its last result."""
        if now >= self.next_expiry_scan:
            self.next_expiry_scan = now + EXPIRY_SCAN_S
            for i, p in enumerate(self.probers):
                if p is not None and p.pending:
                    h = self.health[i]
                    for _ in range(p.expired(now, h.timeout_s)):
                        self._probe_result(h, None, now)
        if now >= self.next_probe:
            for p in self.probers:
                if p is not None:
                    p.send(now)
            self.next_probe = now + self.m["probe_interval_ms"] / 1000
        if self.failback_at is not None and now >= self.failback_at:
            self.failback_at = None
            self._failback()
        if self.m["measure"] and now - self.last_measure >= 1.0:
            self.last_measure = now
            self._measure()

    # ---------------------------------------------------------------- decisions
    def chars(self) -> np.ndarray:
        m = characteristics_matrix(self.cfg)
        for h in self.health:
            for name, value in h.measured.items():
                m[h.index, C.CHAR_INDEX[name]] = value
        return m

    def usable_mask(self) -> np.ndarray:
        """Configured usable, link up, probes answered, and a next-hop MAC to send to."""
        gw = self.router.gw_macs.any(axis=1)
        return np.array([u.usable and h.usable and bool(gw[h.index])
                         for u, h in zip(self.cfg.uplinks, self.health)], np.uint8)

    def apply(self, initial: bool = False) -> None:
        """Push the usable mask and measured values into the selector; move the flows of
        every uplink that stopped being usable, in one rebind each."""
        pipe = self.router.pipeline
        before = getattr(self, "_usable", None)
        usable = self.usable_mask()
        pipe.selector.update(self.chars(), usable, np.array([u.metric for u in self.cfg.uplinks], np.float64))
        self._usable = usable
        if initial or before is None:
            return
        now = time.monotonic()
        table = pipe.selector.choice_table()
        for h in self.health:
            was, is_ = bool(before[h.index]), bool(usable[h.index])
            if was == is_:
                continue
            h.changes += 1
            if not is_:
                h.down_since = now
                # damping: going down again soon after coming up doubles the hold-down
                recent = now - h.up_since < 4 * max(self.m["hold_down_s"], 0.5)
                if h.hold and recent:
                    h.hold = min(MAX_HOLD_S, h.hold * 2)
                else:
                    h.hold = self.m["hold_down_s"]
                t0 = time.perf_counter()
                moved = pipe.flows.rebind(h.index, table)
                dt = (time.perf_counter() - t0) * 1000
                self.moves.append({"uplink": h.name, "reason": h.reason, "flows": int(moved),
                                   "rebind_ms": round(dt, 3), "at": time.time()})
                self.moves = self.moves[-20:]
                self.router.say(f"mmr: uplink {h.name} down ({h.reason}): {moved} flows moved in "
                                f"{dt:.2f} ms; hold-down {h.hold:g} s")
            else:
                h.up_since = now
                h.reason = ""
                self.router.say(f"mmr: uplink {h.name} up; new flows may use it"
                                + (f", flows return in {self.m['failback_hold_s']:g} s"
                                   if self.m["failback"] == "return" else ""))
                if self.m["failback"] == "return":
                    self.failback_at = now + self.m["failback_hold_s"]

    def _failback(self) -> None:
        pipe = self.router.pipeline
        table = pipe.selector.choice_table()
        moved = 0
        for h in self.health:
            moved += pipe.flows.rebind(h.index, table)
        self.router.say(f"mmr: failback: flows rebound to their best uplink ({moved} looked at)")

    def _measure(self) -> None:
        a = self.m["smoothing"]
        for h, u in zip(self.health, self.cfg.uplinks):
            st = h.window_stats()
            if "queueing_delay" in self.m["measure"] and not u.qdisc_bypass and u.chars["bandwidth"] > 0:
                backlog = qdisc_backlog(u.device)     # the engine's own packets wait there
                if backlog is not None:
                    st["queueing_delay"] = backlog * 8 / (u.chars["bandwidth"] * 1e6) * 1000
                    h.delay_source = "qdisc backlog"
            for name in self.m["measure"]:
                if name in st:
                    old = h.measured.get(name)
                    h.measured[name] = st[name] if old is None else (1 - a) * old + a * st[name]
        self.apply()

    # ---------------------------------------------------------------- status
    def status(self) -> list[dict]:
        counts = self.router.pipeline.flows.uplink_counts(len(self.cfg.uplinks))
        chars = self.chars()
        out = []
        for h, u in zip(self.health, self.cfg.uplinks):
            st = h.window_stats()
            out.append({
                "name": h.name, "device": h.dev, "usable": bool(u.usable and h.usable),
                "link": "up" if h.link_up else "down", "probes": "ok" if h.probe_ok else "failing",
                "reason": h.reason, "changes": h.changes, "hold_down_s": h.hold,
                "flows": int(counts[h.index]),
                "rtt_ms": round(st["rtt_ms"], 3) if "rtt_ms" in st else None,
                "probe_loss": round(st["loss"], 4) if "loss" in st else None,
                "characteristics": {n: float(chars[h.index, j]) for j, n in enumerate(C.CHAR_NAMES)},
                "measured": {k: round(v, 4) for k, v in sorted(h.measured.items())},
                "queueing_delay_source": h.delay_source if "queueing_delay" in h.measured else None,
            })
        return out

    def close(self):
        self.events.close()
        for p in self.probers:
            if p is not None:
                p.close()
