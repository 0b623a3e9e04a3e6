"""The connection manager: is each uplink usable, how good is it, and what happens to its
flows when that changes.

    netlink events (engine/netlink.py)   --link up/down, address-->  UplinkHealth.set_link
    ICMPv6/ICMP echo out of each uplink  --RTT or lost-->           UplinkHealth.probe
                                                                     |
                     usable mask / measured V_n  ----> Selector.update  (new flows)
                     an uplink went unusable     ----> FlowTable.rebind (its flows only, one call)
                     failback = "return"         ----> FlowTable.rebind (flows back to the best)

It is given what it needs: the config, the selector and the flow table (``apply`` takes a
reloaded config and selector), the machine's state as netlink last described it, a function
that says which uplinks have a next hop to send to, a log function and a clock.  Nothing
here blocks: link state comes from memory, probes are non-blocking raw sockets in the
engine's poll set, the qdisc backlog arrives as a netlink answer.  The health of one uplink
is a state machine (``UplinkHealth``) driven by explicit times, so tests run it with a fake
clock.
"""
from __future__ import annotations

import collections
import ipaddress
import os
import socket
import struct
import time

import numpy as np

from engine import _kernel as K
from engine import constants as C
from engine.config import characteristics_matrix
from engine.inet import checksum

MAX_HOLD_S = 60.0
MIN_TIMEOUT_S = 0.25


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
                r = K.ICMP6_ECHO_REPLY
                block[r >> 5] &= ~(1 << (r & 31))          # pass echo replies only
                s.setsockopt(socket.IPPROTO_ICMPV6, K.ICMP6_FILTER, struct.pack("8I", *block))
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
            # the kernel stamps each reply as it arrives: time it spends waiting for mmr
            # (a flood keeping the engine busy) is not counted in the RTT
            s.setsockopt(socket.SOL_SOCKET, K.SO_TIMESTAMPNS, 1)
            s.setblocking(False)
            self.socks[fam] = s
        self.pending: dict[int, tuple[float, float]] = {}     # seq -> (send time, wall time)

    def fds(self):
        return [s.fileno() for s in self.socks.values()]

    def send(self, now: float) -> None:
        for t in self.targets:
            self.seq = (self.seq + 1) & 0xFFFF
            if t.version == 6:
                msg = struct.pack("!BBHHH", K.ICMP6_ECHO_REQUEST, 0, 0, self.ident, self.seq) + b"mmr-probe"
            else:
                body = struct.pack("!BBHHH", K.ICMP_ECHO, 0, 0, self.ident, self.seq) + b"mmr-probe"
                msg = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
            try:
                self.socks[t.version].sendto(msg, (str(t), 0))
            except OSError:
                pass                            # unreachable now: it will count as lost
            self.pending[self.seq] = (now, time.time())

    def receive(self, now: float) -> list[float]:
        """RTTs (seconds) of the replies that arrived, from their kernel receive stamps."""
        rtts = []
        for fam, s in self.socks.items():
            while True:
                try:
                    data, anc, _, _ = s.recvmsg(2048, 64)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                stamp = None
                for level, kind, val in anc:
                    if level == socket.SOL_SOCKET and kind == K.SCM_TIMESTAMPNS and len(val) >= 16:
                        sec, nsec = struct.unpack_from("=qq", val)
                        stamp = sec + nsec * 1e-9
                if fam == 4:
                    data = data[(data[0] & 0x0F) * 4:]
                    want = K.ICMP_ECHOREPLY
                else:
                    want = K.ICMP6_ECHO_REPLY
                if len(data) < 8 or data[0] != want:
                    continue
                ident, seq = struct.unpack_from("!HH", data, 4)
                if ident == self.ident and seq in self.pending:
                    sent, sent_wall = self.pending.pop(seq)
                    rtts.append(stamp - sent_wall if stamp is not None else now - sent)
        return rtts

    def expired(self, now: float, timeout: float) -> int:
        old = [q for q, (t, _) in self.pending.items() if now - t > timeout]
        for q in old:
            del self.pending[q]
        return len(old)

    def close(self):
        for s in self.socks.values():
            s.close()


class UplinkHealth:
    """One uplink's state: link, probes (hysteresis and hold-down), measurements.  Every
    transition takes the time it happens at."""

    def __init__(self, index: int, name: str, dev: str, window: int, now: float):
        self.index, self.name, self.dev = index, name, dev
        self.link_up = True
        self.probe_ok = True
        self.fails = 0
        self.successes = 0
        self.down_since: float | None = None
        self.up_since: float = now
        self.hold = 0.0
        self.changes = 0
        self.reason = ""
        self.results = collections.deque(maxlen=window)   # RTT seconds, or None for lost
        self.min_rtt: float | None = None
        self.measured: dict[str, float] = {}
        self.timeout_s = 1.0
        self.delay_source = "probe RTT - min RTT"

    @property
    def usable(self) -> bool:
        return self.link_up and self.probe_ok

    def set_link(self, ok: bool, why: str) -> bool:
        """The link's state from netlink (while down, the latest cause is the reason); True
        when it changed."""
        if not ok:
            self.reason = why
        if ok == self.link_up:
            return False
        self.link_up = ok
        return True

    def probe(self, rtt: float | None, now: float, down_after: int, up_after: int) -> bool:
        """One probe's result (None: lost); True when probe_ok changed."""
        self.results.append(rtt)
        if rtt is None:
            self.fails += 1
            self.successes = 0
            if self.probe_ok and self.fails >= down_after:
                self.probe_ok = False
                if self.link_up:                # a dead link explains lost probes already
                    self.reason = f"{self.fails} probes lost"
                return True
            return False
        self.min_rtt = rtt if self.min_rtt is None else min(self.min_rtt, rtt)
        self.fails = 0
        self.successes += 1
        if (not self.probe_ok and self.successes >= up_after
                and (self.down_since is None or now - self.down_since >= self.hold)):
            self.probe_ok = True
            if self.link_up:
                self.reason = ""
            return True
        return False

    def went_down(self, now: float, hold_down_s: float) -> None:
        """Usable -> unusable: start the hold-down, doubled when it flaps (up again only a
        short while ago), at most MAX_HOLD_S."""
        self.changes += 1
        self.down_since = now
        recent = now - self.up_since < 4 * max(hold_down_s, 0.5)
        self.hold = min(MAX_HOLD_S, self.hold * 2) if (self.hold and recent) else hold_down_s

    def came_up(self, now: float) -> None:
        self.changes += 1
        self.up_since = now
        self.reason = ""

    def timeout(self, top: float) -> float:
        """How long a probe may take: 3 x the mean RTT of the window (at least 250 ms, at
        most ``top``), so a fast link is judged fast and a slow one fairly."""
        rtts = [r for r in self.results if r is not None]
        if not rtts:
            return top
        return min(top, max(MIN_TIMEOUT_S, 3 * sum(rtts) / len(rtts)))

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
    def __init__(self, cfg, selector, flows, state, next_hop_known, log, clock=time.monotonic,
                 probes: bool = True, backlog=None):
        """``state``: engine.netlink.State; ``next_hop_known()``: bool per uplink (a gateway
        MAC to send to, and the device present); ``backlog(index)``: the last root-qdisc
        backlog in bytes of a device, or None."""
        self.cfg, self.selector, self.flows, self.state = cfg, selector, flows, state
        self.next_hop_known, self.log, self.clock, self.backlog = next_hop_known, log, clock, backlog
        self.m = dict(cfg.monitor)
        now = clock()
        self.health = [UplinkHealth(i, u.name, u.device, self.m["window"], now)
                       for i, u in enumerate(cfg.uplinks)]
        for h in self.health:
            h.link_up = self._link_ok(h.dev)
            if not h.link_up:
                h.reason = "link down" if self.state.link(h.dev) is None or not self.state.link(h.dev).up \
                    else "no address"
        self.probers: list[Prober | None] = []
        base = (os.getpid() * 7) & 0xFFFF
        for i, u in enumerate(cfg.uplinks):
            ok = probes and self.m["probes"] and u.probe_targets
            self.probers.append(Prober(u.device, u.probe_targets, base + i) if ok else None)
        self.next_probe = now
        for h in self.health:
            h.timeout_s = h.timeout(self.m["probe_timeout_ms"] / 1000)
        self.failback_at: float | None = None
        self.moves: list[dict] = []          # the last failovers, for status
        self.moved_flows = 0
        self.suspect: list[int] = []
        self.last_measure = 0.0
        self._usable = None
        self.apply()

    # ---------------------------------------------------------------- poll integration
    def fds(self) -> dict[int, int]:
        """Probe sockets: fd -> uplink index."""
        out = {}
        for i, p in enumerate(self.probers):
            if p is not None:
                for fd in p.fds():
                    out[fd] = i
        return out

    def probe_readable(self, i: int) -> None:
        now = self.clock()
        h = self.health[i]
        for rtt in self.probers[i].receive(now):
            self._probe_result(h, rtt, now)

    def links_changed(self, why: dict[int, str] | None = None) -> None:
        """Netlink said links or addresses changed: re-read each uplink's state from memory."""
        changed = False
        for h in self.health:
            link = self.state.link(h.dev)
            if link is None:
                changed |= h.set_link(False, "device removed")
            elif not link.flags & K.IFF_UP:
                changed |= h.set_link(False, "link down")
            elif not link.up:
                changed |= h.set_link(False, "no carrier")
            elif not self.state.has_address(link.index):
                changed |= h.set_link(False, "address removed" if h.link_up else "no address")
            else:
                changed |= h.set_link(True, "")
        if changed:
            self.apply()

    def _link_ok(self, dev: str) -> bool:
        """Admin up, carrier, and an address beyond link-local (the uplink's own)."""
        link = self.state.link(dev)
        return link is not None and link.up and self.state.has_address(link.index)

    # ---------------------------------------------------------------- probes
    def _probe_result(self, h: UplinkHealth, rtt: float | None, now: float) -> None:
        changed = h.probe(rtt, now, self.m["down_after"], self.m["up_after"])
        h.timeout_s = h.timeout(self.m["probe_timeout_ms"] / 1000)
        if changed:
            self.apply()

    def tick(self, now: float | None = None) -> None:
        """Runs on every return of the loop to Python (at the latest at next_due()): lost
        probes, probes to send every probe_interval_ms, failback and measurements when due."""
        now = self.clock() if now is None else now
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

    def next_due(self, now: float) -> float:
        """When tick() has something to do next: a probe to send, one to give up on, a
        failback, a measurement."""
        due = [self.next_probe if any(p is not None for p in self.probers) else now + 1.0]
        for i, p in enumerate(self.probers):
            if p is not None and p.pending:
                due.append(min(t for t, _ in p.pending.values()) + self.health[i].timeout_s)
        if self.failback_at is not None:
            due.append(self.failback_at)
        if self.m["measure"]:
            due.append(self.last_measure + 1.0)
        return min(due)

    # ---------------------------------------------------------------- decisions
    def chars(self) -> np.ndarray:
        m = characteristics_matrix(self.cfg)
        for h in self.health:
            for name, value in h.measured.items():
                m[h.index, C.CHAR_INDEX[name]] = value
        return m

    def usable_mask(self) -> np.ndarray:
        """Configured usable, link up, probes answered, and a next hop to send to.  When the
        probes alone would leave no uplink at all, the ones whose link is up and whose next
        hop is known stay in use: every uplink failing at the same moment is more likely the
        probes' problem than the world's (mwan3 and OPNsense keep a gateway too)."""
        nh = self.next_hop_known()
        mask = np.array([u.usable and h.usable and bool(nh[h.index])
                         for u, h in zip(self.cfg.uplinks, self.health)], np.uint8)
        suspect = []
        if not mask.any():
            suspect = [h.index for u, h in zip(self.cfg.uplinks, self.health)
                       if u.usable and h.link_up and not h.probe_ok and nh[h.index]]
            mask[suspect] = 1
        if bool(suspect) != bool(self.suspect):
            self.log("mmr: every uplink looks down by its probes alone; keeping " +
                     ", ".join(self.cfg.uplinks[i].name for i in suspect) + " in use until probes answer"
                     if suspect else "mmr: probes answer again; uplinks are judged by them again")
        self.suspect = suspect
        return mask

    def apply(self, cfg=None, selector=None) -> None:
        """Push the usable mask and measured values into the selector; move the flows of
        every uplink that stopped being usable, in one rebind each.  With ``cfg`` and
        ``selector``: a reloaded policy (the flowbase is kept)."""
        if cfg is not None:
            self.cfg = cfg
            self.m.update({k: v for k, v in cfg.monitor.items() if k not in ("control_socket", "probes", "window")})
        if selector is not None:
            self.selector = selector
            self._usable = None
        before = self._usable
        usable = self.usable_mask()
        self.selector.update(self.chars(), usable, np.array([u.metric for u in self.cfg.uplinks], np.float64))
        self._usable = usable
        if before is None:
            return
        now = self.clock()
        table = self.selector.choice_table()
        for h in self.health:
            was, is_ = bool(before[h.index]), bool(usable[h.index])
            if was == is_:
                continue
            if not is_:
                h.went_down(now, self.m["hold_down_s"])
                t0 = time.perf_counter()
                moved = self.flows.rebind(h.index, table)
                dt = (time.perf_counter() - t0) * 1000
                self.moved_flows += int(moved)
                self.moves.append({"uplink": h.name, "reason": h.reason or "no next hop", "flows": int(moved),
                                   "rebind_ms": round(dt, 3), "at": time.time()})
                self.moves = self.moves[-20:]
                self.log(f"mmr: uplink {h.name} down ({h.reason or 'no next hop'}): {moved} flows moved in "
                         f"{dt:.2f} ms; hold-down {h.hold:g} s")
            else:
                h.came_up(now)
                self.log(f"mmr: uplink {h.name} up; new flows may use it"
                         + (f", flows return in {self.m['failback_hold_s']:g} s"
                            if self.m["failback"] == "return" else ""))
                if self.m["failback"] == "return":
                    self.failback_at = now + self.m["failback_hold_s"]

    def _failback(self) -> None:
        table = self.selector.choice_table()
        moved = 0
        for h in self.health:
            moved += self.flows.rebind(h.index, table)
        self.log(f"mmr: failback: flows rebound to their best uplink ({moved} looked at)")

    def _measure(self) -> None:
        a = self.m["smoothing"]
        for h, u in zip(self.health, self.cfg.uplinks):
            st = h.window_stats()
            if ("queueing_delay" in self.m["measure"] and not u.qdisc_bypass and u.chars["bandwidth"] > 0
                    and self.backlog is not None):
                idx = self.state.index(u.device)
                backlog = None if idx is None else self.backlog(idx)
                if backlog is not None:             # the engine's own packets wait there
                    st["queueing_delay"] = backlog * 8 / (u.chars["bandwidth"] * 1e6) * 1000
                    h.delay_source = "qdisc backlog"
            for name in self.m["measure"]:
                if name in st:
                    old = h.measured.get(name)
                    h.measured[name] = st[name] if old is None else (1 - a) * old + a * st[name]
        self.apply()

    # ---------------------------------------------------------------- status
    def status(self) -> list[dict]:
        counts = self.flows.uplink_counts(len(self.cfg.uplinks))
        chars = self.chars()
        usable = self._usable if self._usable is not None else self.usable_mask()
        out = []
        for h, u in zip(self.health, self.cfg.uplinks):
            st = h.window_stats()
            out.append({
                "name": h.name, "device": h.dev, "usable": bool(usable[h.index]),
                "link": "up" if h.link_up else "down", "probes": "ok" if h.probe_ok else "failing",
                "reason": ("kept: every uplink's probes fail" if h.index in self.suspect else
                           h.reason if h.reason or usable[h.index] else "no next hop"),
                "changes": h.changes, "hold_down_s": h.hold,
                "flows": int(counts[h.index]),
                "rtt_ms": round(st["rtt_ms"], 3) if "rtt_ms" in st else None,
                "probe_loss": round(st["loss"], 4) if "loss" in st else None,
                "characteristics": {n: float(chars[h.index, j]) for j, n in enumerate(C.CHAR_NAMES)},
                "measured": {k: round(v, 4) for k, v in sorted(h.measured.items())},
                "queueing_delay_source": h.delay_source if "queueing_delay" in h.measured else None,
            })
        return out

    def close(self):
        for p in self.probers:
            if p is not None:
                p.close()
