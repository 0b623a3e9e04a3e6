"""The connection manager: is each uplink usable, how good is it, and what happens to its
flows when that changes.

    netlink events (engine/netlink.py)   --link up/down, address-->  UplinkHealth.set_link
    ICMPv6/ICMP echo out of each uplink  --RTT or lost, per round-->  UplinkHealth.tally/round_done
    measured RTT and loss vs thresholds  --degraded/recovered-->     UplinkHealth.judge
    mmr uplink NAME up|down|auto         --administrative mode-->    ConnectionManager.set_admin
                                                                     |
                     usable mask / V_n / metric  ----> Selector.update  (new flows)
                     an uplink went unusable     ----> FlowTable.rebind (its flows only, one call)
                     failback = "return"         ----> FlowTable.rebind (flows back to the best)
                     every event above           ----> Hooks (the operator's script, never waited for)

It is given what it needs: the config, the selector and the flow table (``apply`` takes a
reloaded config and selector), the machine's state as netlink last described it, a function
that says which uplinks have a next hop to send to, a log function and a clock.  Nothing
here blocks: link state comes from memory, probes are non-blocking raw sockets in the
engine's poll set, the qdisc backlog arrives as a netlink answer, hook scripts are started
with ``Popen`` and reaped from ``tick``.  The health of one uplink is a state machine
(``UplinkHealth``) driven by explicit times, so tests run it with a fake clock (and a fake
``prober``).

Probe settings (``probe_interval_ms``, ``probe_timeout_ms``, ``down_after``, ``up_after``,
``hold_down_s``, ``window``, ``probes``, the degraded thresholds, ``hook``,
``hook_timeout_s``) are [monitor]'s unless an [[uplink]] sets them itself
(``Uplink.monitor`` holds the effective ones).  Each probe round sends one echo request to
every target of the uplink; the round succeeds when ``reliability`` of them answer (decided
as soon as that is certain either way), and ``down_after`` failed rounds in a row take the
uplink down, ``up_after`` successful ones (and the hold-down) bring it back.

**Degraded.**  An uplink whose probes answer but whose mean RTT exceeds ``degraded_rtt_ms``
or whose probe loss exceeds ``degraded_loss`` (over the probes since it last came up, once
there are ``DEGRADED_MIN_SAMPLES``) for ``down_after`` rounds in a row is *degraded*; it
recovers when both are below ``recovered_rtt_ms`` / ``recovered_loss`` (default 0.8 x the
degraded threshold) for ``up_after`` rounds in a row: two thresholds and two counts, so a
value hovering around one threshold does not flap.  A degraded uplink stays usable (its
flows are not moved: it still carries traffic) but the metric sees it as it is: its V_n
loss, queueing delay and jitter become at least the probes' loss, mean RTT and jitter (the
RTT over-states the queueing delay: a deliberate pessimistic reading, used only while
degraded, and whether or not [monitor] ``measure`` asks for live values), and its metric is
ranked after every healthy uplink's, so preference 0 (the primary) and ties go to a healthy
uplink.  A policy weighing only characteristics the probes cannot see (cost, security, ...)
keeps choosing by them.  ``status`` shows ``degraded`` and why.
"""
from __future__ import annotations

import collections
import ipaddress
import os
import signal
import socket
import struct
import subprocess
import time

import numpy as np

from engine import _kernel as K
from engine import constants as C
from engine.config import MONITOR_KEYS, UPLINK_MONITOR_KEYS, characteristics_matrix
from engine.inet import checksum

MAX_HOLD_S = 60.0
MIN_TIMEOUT_S = 0.25
DEGRADED_MIN_SAMPLES = 10         # probe results (since the uplink came up) before it is judged
DEGRADED_RANK = float(1 << 40)    # added to a degraded uplink's metric: after every healthy one
ADMIN_MODES = ("auto", "up", "down")
HOOK_POLL_S = 0.1                 # how often running hooks are looked at (reaped, timed out)
HOOK_KILL_GRACE_S = 1.0           # SIGTERM at the timeout, SIGKILL this much later
HOOK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# hook events waiting behind a running hook: only the newest of each pair is kept
HOOK_PAIR = {"up": "state", "down": "state", "degraded": "quality", "recovered": "quality",
             "admin-up": "admin", "admin-down": "admin", "admin-auto": "admin"}


class Prober:
    """Echo requests to each target out of one device (SO_BINDTODEVICE); replies matched by
    identifier and sequence number.  One ``send`` is one probe round (a request to every
    target); results name their round."""

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
            # the kernel stamps each reply as it arrives: time it spends waiting for mmr
            # (a flood keeping the engine busy) is not counted in the RTT
            s.setsockopt(socket.SOL_SOCKET, K.SO_TIMESTAMPNS, 1)
            s.setblocking(False)
            self.socks[fam] = s
        self.round = 0
        self.pending: dict[int, tuple[float, float, int]] = {}   # seq -> (send time, wall time, round)
        self.bound = False
        self.rebind()

    def rebind(self) -> bool:
        """Bind the sockets to the device as it is now (SO_BINDTODEVICE takes its index: a
        device re-created under the name needs this again); False while it is absent, and
        then nothing is sent (an unbound socket would probe through another uplink)."""
        try:
            for s in self.socks.values():
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.dev.encode())
            self.bound = True
        except OSError:
            self.bound = False
        return self.bound

    def fds(self):
        return [s.fileno() for s in self.socks.values()]

    def send(self, now: float) -> int:
        """One round: a request to every target; returns the round's number."""
        self.round += 1
        for t in self.targets:
            self.seq = (self.seq + 1) & 0xFFFF
            if t.version == 6:
                msg = struct.pack("!BBHHH", K.ICMP6_ECHO_REQUEST, 0, 0, self.ident, self.seq) + b"mmr-probe"
            else:
                body = struct.pack("!BBHHH", K.ICMP_ECHO, 0, 0, self.ident, self.seq) + b"mmr-probe"
                msg = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
            try:
                if self.bound:
                    self.socks[t.version].sendto(msg, (str(t), 0))
            except OSError:
                pass                            # unreachable now: it will count as lost
            self.pending[self.seq] = (now, time.time(), self.round)
        return self.round

    def receive(self, now: float) -> list[tuple[float, int]]:
        """(RTT seconds, round) of the replies that arrived, from their kernel receive stamps."""
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
                    sent, sent_wall, rnd = self.pending.pop(seq)
                    rtts.append((stamp - sent_wall if stamp is not None else now - sent, rnd))
        return rtts

    def expired(self, now: float, timeout: float) -> list[int]:
        """The rounds of the probes older than ``timeout`` (one entry per lost probe)."""
        old = [(q, r) for q, (t, _, r) in self.pending.items() if now - t > timeout]
        for q, _ in old:
            del self.pending[q]
        return [r for _, r in old]

    def oldest(self) -> float | None:
        return min((t for t, _, _ in self.pending.values()), default=None)

    def close(self):
        for s in self.socks.values():
            s.close()


class UplinkHealth:
    """One uplink's state: link, probes (rounds, hysteresis and hold-down), degraded or not,
    the administrative mode, measurements.  Every transition takes the time it happens at."""

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
        self.admin = "auto"                 # "auto": link and probes decide; "up"/"down": forced
        self.targets, self.need = 1, 1      # probe targets, and how many must answer per round
        self.rounds: dict[int, list] = {}   # round -> [probes outstanding, answered, decided]
        self.fresh = 0                      # probe results since the uplink (its link, its probes) came up
        self.degraded = False
        self.degraded_reason = ""
        self.degraded_changes = 0
        self.over = 0                       # consecutive rounds over a degraded threshold
        self.under = 0                      # consecutive rounds under the recovery thresholds
        self.removed = False                # taken out of the policy by mmr reload: never usable again

    @property
    def usable(self) -> bool:
        if self.removed:
            return False
        if self.admin != "auto":
            return self.admin == "up"
        return self.link_up and self.probe_ok

    def set_link(self, ok: bool, why: str) -> bool:
        """The link's state from netlink (while down, the latest cause is the reason); True
        when it changed."""
        if not ok:
            self.reason = why
        if ok == self.link_up:
            return False
        self.link_up = ok
        if ok:
            self.fresh = 0                  # what was lost while it was down says nothing now
        return True

    # -------------------------------------------------------------- probe rounds
    def start_round(self, rnd: int, targets: int, need: int) -> None:
        self.targets, self.need = targets, max(1, min(need, targets))
        self.rounds[rnd] = [targets, 0, False]

    def sample(self, rtt: float | None) -> None:
        """One probe's result into the window (None: lost)."""
        self.results.append(rtt)
        self.fresh += 1
        if rtt is not None:
            self.min_rtt = rtt if self.min_rtt is None else min(self.min_rtt, rtt)

    def tally(self, rnd: int | None, answered: bool) -> bool | None:
        """One probe of round ``rnd`` answered or lost: True/False once the round's outcome is
        certain (``need`` answers / too few can still come), else None.  ``rnd`` None: a
        round of one probe."""
        if rnd is None:
            return answered
        r = self.rounds.get(rnd)
        if r is None:
            return None
        r[0] -= 1
        r[1] += bool(answered)
        out = None
        if not r[2]:
            if r[1] >= self.need:
                r[2], out = True, True
            elif r[1] + r[0] < self.need:
                r[2], out = True, False
        if r[0] <= 0:
            del self.rounds[rnd]
        return out

    def lost_text(self) -> str:
        if self.targets <= 1:
            return f"{self.fails} probes lost"
        return (f"{self.fails} probe rounds with fewer than {self.need} of {self.targets} targets "
                f"answering (probes lost)")

    def round_done(self, ok: bool, now: float, down_after: int, up_after: int) -> bool:
        """A probe round's outcome; True when probe_ok changed."""
        if not ok:
            self.fails += 1
            self.successes = 0
            if self.probe_ok and self.fails >= down_after:
                self.probe_ok = False
                if self.link_up:                # a dead link explains lost probes already
                    self.reason = self.lost_text()
                return True
            return False
        self.fails = 0
        self.successes += 1
        if (not self.probe_ok and self.successes >= up_after
                and (self.down_since is None or now - self.down_since >= self.hold)):
            self.probe_ok = True
            self.fresh = 0
            if self.link_up:
                self.reason = ""
            return True
        return False

    def probe(self, rtt: float | None, now: float, down_after: int, up_after: int) -> bool:
        """One probe's result as a round of its own (None: lost); True when probe_ok changed."""
        self.sample(rtt)
        return self.round_done(rtt is not None, now, down_after, up_after)

    # -------------------------------------------------------------- degraded
    def judge(self, s: dict) -> str | None:
        """After a probe round: "degraded" or "recovered" when that changed (see the module
        docstring), else None.  ``s``: the uplink's settings."""
        drtt, dloss = s["degraded_rtt_ms"], s["degraded_loss"]
        if not drtt and not dloss:
            if self.degraded:                   # a reload removed the thresholds
                self.degraded, self.degraded_reason, self.over, self.under = False, "", 0, 0
                self.degraded_changes += 1
                return "recovered"
            return None
        n = min(self.fresh, len(self.results))
        if not (self.link_up and self.probe_ok) or n < min(DEGRADED_MIN_SAMPLES, self.results.maxlen):
            return None
        recent = list(self.results)[-n:]
        rtts = [r for r in recent if r is not None]
        loss = 1 - len(rtts) / n
        rtt_ms = 1000 * sum(rtts) / len(rtts) if rtts else None
        rrtt = s["recovered_rtt_ms"] or 0.8 * drtt
        rloss = s["recovered_loss"] or 0.8 * dloss
        over = []
        if drtt and rtt_ms is not None and rtt_ms > drtt:
            over.append(f"RTT {rtt_ms:.1f} ms > {drtt:g} ms")
        if dloss and loss > dloss:
            over.append(f"probe loss {100 * loss:.0f}% > {100 * dloss:g}%")
        under = ((not drtt or rtt_ms is None or rtt_ms < rrtt) and (not dloss or loss < rloss))
        if not self.degraded:
            self.under = 0
            self.over = self.over + 1 if over else 0
            if self.over >= s["down_after"]:
                self.degraded, self.degraded_reason, self.over = True, "; ".join(over), 0
                self.degraded_changes += 1
                return "degraded"
            return None
        self.over = 0
        if over:
            self.degraded_reason = "; ".join(over)
        self.under = self.under + 1 if under else 0
        if self.under >= s["up_after"]:
            self.under = 0
            self.degraded = False
            parts = ([f"RTT {rtt_ms:.1f} ms < {rrtt:g} ms"] if drtt and rtt_ms is not None else []) + \
                    ([f"probe loss {100 * loss:.0f}% < {100 * rloss:g}%"] if dloss else [])
            self.degraded_reason = "; ".join(parts)      # why it recovered, until it is degraded again
            self.degraded_changes += 1
            return "recovered"
        return None

    # -------------------------------------------------------------- transitions
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
        if self.link_up and self.probe_ok:     # forced up or kept: the cause still stands
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


class Hooks:
    """The operator's hook scripts (like mwan3's ``mwan3.user``), run on uplink events with
    ACTION, UPLINK, DEVICE, FAMILY, GATEWAY, REASON, ADMIN, USABLE, DEGRADED, RTT_MS, LOSS
    and PATH in an otherwise empty environment.

    A hook never makes the engine wait: it is started with ``Popen`` (no shell, stdin from
    /dev/null, stdout to /dev/null, stderr the engine's, other descriptors closed, a session
    of its own, cwd /) and looked at from ``poll`` (``ConnectionManager.tick``) every
    HOOK_POLL_S with a non-blocking ``Popen.poll``.  One runs at a time per uplink; events
    meanwhile wait, and of the waiting ones only the newest of each pair (up/down,
    degraded/recovered, admin-*) is kept, so after a burst the hook sees the latest state,
    not the history (a hook should be idempotent).  A hook still running after its timeout
    gets SIGTERM, HOOK_KILL_GRACE_S later SIGKILL (its whole process group); a non-zero exit
    is logged.  ``close`` kills what still runs."""

    def __init__(self, log):
        self.log = log
        self.running: dict[int, dict] = {}       # uplink -> {proc, action, name, deadline, termed}
        self.waiting: dict[int, list[dict]] = {}
        self.last: dict[int, dict] = {}          # uplink -> {action, status, seconds}
        self.due = 0.0
        self.started = self.failed = self.killed = 0

    def _warn(self, text: str) -> None:
        getattr(self.log, "warning", self.log)(text)

    def fire(self, i: int, path: str, timeout_s: float, env: dict, now: float) -> None:
        ev = {"path": path, "timeout": timeout_s, "env": env}
        if i in self.running or self.waiting.get(i):
            q = self.waiting.setdefault(i, [])
            pair = HOOK_PAIR[env["ACTION"]]
            q[:] = [e for e in q if HOOK_PAIR[e["env"]["ACTION"]] != pair] + [ev]
            return
        self._start(i, ev, now)

    def _start(self, i: int, ev: dict, now: float) -> bool:
        env = ev["env"]
        try:
            proc = subprocess.Popen([ev["path"]], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    close_fds=True, start_new_session=True, cwd="/")
        except (OSError, ValueError) as exc:
            self.failed += 1
            self._warn(f"hook {ev['path']} for uplink {env['UPLINK']} ({env['ACTION']}) could not start: "
                       f"{getattr(exc, 'strerror', None) or exc}")
            return False
        self.started += 1
        self.running[i] = {"proc": proc, "action": env["ACTION"], "name": env["UPLINK"], "path": ev["path"],
                           "started": now, "deadline": now + ev["timeout"], "termed": None}
        return True

    @staticmethod
    def _signal(proc, sig) -> None:
        try:
            os.killpg(proc.pid, sig)            # the hook and whatever it started
        except (ProcessLookupError, PermissionError):
            pass

    def active(self) -> bool:
        return bool(self.running) or any(self.waiting.values())

    def poll(self, now: float) -> None:
        """Reap finished hooks, time out slow ones, start waiting ones.  Never waits."""
        self.due = now + HOOK_POLL_S
        for i, r in list(self.running.items()):
            rc = r["proc"].poll()
            if rc is None:
                if r["termed"] is None and now >= r["deadline"]:
                    r["termed"] = now
                    self.killed += 1
                    self._warn(f"hook {r['path']} for uplink {r['name']} ({r['action']}) still runs after "
                               f"{r['deadline'] - r['started']:g} s; killed")
                    self._signal(r["proc"], signal.SIGTERM)
                elif r["termed"] is not None and now >= r["termed"] + HOOK_KILL_GRACE_S:
                    self._signal(r["proc"], signal.SIGKILL)
                continue
            del self.running[i]
            self.last[i] = {"action": r["action"], "status": rc, "seconds": round(now - r["started"], 3)}
            if rc != 0 and r["termed"] is None:
                self.failed += 1
                what = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
                self._warn(f"hook {r['path']} for uplink {r['name']} ({r['action']}) {what}")
        for i, q in self.waiting.items():
            while q and i not in self.running:
                self._start(i, q.pop(0), now)

    def status(self, i: int) -> dict:
        r = self.running.get(i)
        return {"running": r["action"] if r else None,
                "waiting": [e["env"]["ACTION"] for e in self.waiting.get(i, [])],
                "last": self.last.get(i)}

    def close(self) -> None:
        """Kill what still runs (the engine is stopping) and reap it."""
        for r in self.running.values():
            self._signal(r["proc"], signal.SIGKILL)
        for r in self.running.values():
            try:
                r["proc"].wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        self.running.clear()
        self.waiting.clear()


class ConnectionManager:
    def __init__(self, cfg, selector, flows, state, next_hop_known, log, clock=time.monotonic,
                 probes: bool = True, backlog=None, prober=Prober):
        """``state``: engine.netlink.State; ``next_hop_known()``: bool per uplink (a gateway
        MAC to send to, and the device present); ``backlog(index)``: the last root-qdisc
        backlog in bytes of a device, or None; ``prober(dev, targets, ident)``: what sends
        the probes (``Prober``; tests give a fake)."""
        self.cfg, self.selector, self.flows, self.state = cfg, selector, flows, state
        self.next_hop_known, self.log, self.clock, self.backlog = next_hop_known, log, clock, backlog
        self.m = dict(cfg.monitor)
        self.s = self._settings()
        now = clock()
        self.probes, self.prober = probes, prober
        n = len(cfg.uplinks)
        self.health: list = [None] * n
        self.probers: list = [None] * n
        self.next_probe = [now] * n
        for i in range(n):
            self._slot(i, now)
        self.hooks = Hooks(log)
        self.failback_at: float | None = None
        self.moves: list[dict] = []          # the last failovers, for status
        self.moved_flows = 0
        self.suspect: list[int] = []
        self.last_measure = 0.0
        self._usable = None
        self.apply()

    def _slot(self, i: int, now: float) -> None:
        """Uplink slot i's health and probes from scratch, for cfg.uplinks[i] (an empty slot:
        never usable, nothing probed)."""
        u = self.cfg.uplinks[i]
        if self.probers[i] is not None:
            self.probers[i].close()
        h = self.health[i] = UplinkHealth(i, u.name, u.device, self.s[i]["window"], now)
        h.link_up = self._link_ok(h.dev)
        if not h.link_up:
            link = self.state.link(h.dev)
            h.reason = "no device yet" if link is None else "link down" if not link.up else "no address"
        ok = self.probes and self.s[i]["probes"] and u.probe_targets and not u.empty
        self.probers[i] = self.prober(u.device, u.probe_targets, ((os.getpid() * 7) + i) & 0xFFFF) if ok else None
        self.next_probe[i] = now
        h.timeout_s = h.timeout(self.s[i]["probe_timeout_ms"] / 1000)
        h.targets = max(1, len(u.probe_targets))
        h.need = max(1, min(getattr(u, "reliability", 1), h.targets))

    def remove(self, i: int) -> None:
        """mmr reload took uplink i out: unusable at once, its flows moved (counted, listed in
        the failovers as "removed by reload"), its probes stopped.  The slot is emptied by the
        next apply(cfg)."""
        h = self.health[i]
        h.removed, h.reason = True, "removed by reload"
        if self.probers[i] is not None:
            self.probers[i].close()
            self.probers[i] = None
        self.apply()

    def _settings(self) -> list[dict]:
        """Each uplink's effective probe, degraded and hook settings: its own, else [monitor]'s."""
        base = {k: self.m.get(k, MONITOR_KEYS[k].default) for k in UPLINK_MONITOR_KEYS}
        return [{**base, **getattr(u, "overrides", {})} for u in self.cfg.uplinks]

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
        for rtt, rnd in self.probers[i].receive(now):
            self._probe_result(h, rtt, now, rnd)

    def device_back(self, i: int) -> None:
        """Uplink i's device appeared or was re-created: its probes go out of it again."""
        p = self.probers[i]
        if p is not None and hasattr(p, "rebind"):
            p.rebind()

    def links_changed(self, why: dict[int, str] | None = None) -> None:
        """Netlink said links or addresses changed: re-read each uplink's state from memory."""
        changed = False
        for h in self.health:
            if h.removed:
                continue
            link = self.state.link(h.dev)
            if link is None:                        # (absent since the start: still "no device yet")
                changed |= h.set_link(False, "no device yet" if h.reason == "no device yet" else "device removed")
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
    def _probe_result(self, h: UplinkHealth, rtt: float | None, now: float, rnd: int | None = None) -> None:
        """One probe's result (None: lost) of probe round ``rnd`` (None: a round of its own)."""
        s = self.s[h.index]
        h.sample(rtt)
        h.timeout_s = h.timeout(s["probe_timeout_ms"] / 1000)
        ok = h.tally(rnd, rtt is not None)
        if ok is None:
            return                                  # the round is not decided yet
        changed = h.round_done(ok, now, s["down_after"], s["up_after"])
        event = h.judge(s)
        if changed or event is not None:
            self.apply()                            # a degraded uplink: the metric sees it as it is
        if event is not None:
            self.log(f"uplink {h.name} {event} ({h.degraded_reason})" +
                     ("; new flows prefer healthy uplinks, its flows stay" if event == "degraded" else ""))
            self._hook(h, event, h.degraded_reason, now)

    def tick(self, now: float | None = None) -> None:
        """Runs on every return of the loop to Python (at the latest at next_due()): lost
        probes, probe rounds to send every probe_interval_ms (per uplink), failback,
        measurements, hook scripts to reap or time out."""
        now = self.clock() if now is None else now
        for i, p in enumerate(self.probers):
            if p is not None and p.pending:
                h = self.health[i]
                for rnd in p.expired(now, h.timeout_s):
                    self._probe_result(h, None, now, rnd)
        for i, p in enumerate(self.probers):
            if p is not None and now >= self.next_probe[i]:
                u = self.cfg.uplinks[i]
                rnd = p.send(now)
                self.health[i].start_round(rnd, len(p.targets), getattr(u, "reliability", 1))
                self.next_probe[i] = now + self.s[i]["probe_interval_ms"] / 1000
        if self.failback_at is not None and now >= self.failback_at:
            self.failback_at = None
            self._failback()
        if self.m["measure"] and now - self.last_measure >= 1.0:
            self.last_measure = now
            self._measure()
        if self.hooks.active() and now >= self.hooks.due:
            self.hooks.poll(now)

    def next_due(self, now: float) -> float:
        """When tick() has something to do next: a probe round to send, a probe to give up
        on, a failback, a measurement, a hook to look at."""
        due = [self.next_probe[i] for i, p in enumerate(self.probers) if p is not None] or [now + 1.0]
        for i, p in enumerate(self.probers):
            if p is not None and p.pending:
                due.append(p.oldest() + self.health[i].timeout_s)
        if self.failback_at is not None:
            due.append(self.failback_at)
        if self.m["measure"]:
            due.append(self.last_measure + 1.0)
        if self.hooks.active():
            due.append(max(now, self.hooks.due))
        return min(due)

    # ---------------------------------------------------------------- administrative mode
    def set_admin(self, name: str, mode: str) -> dict:
        """The administrative override of one uplink (``mmr uplink NAME down|up|auto``):

        * ``"down"``: unusable whatever its link and probes say: its flows are moved at
          once, as on a failure (one rebind, listed in the failovers with reason "admin
          down"), and it gets no new flows;
        * ``"up"``: usable whatever its link state and probes say (it still needs a next hop
          to send to, and ``usable = false`` in the policy still keeps it out);
        * ``"auto"``: link state and probes decide again (the default).

        Probes go on under an override, so "auto" returns to a known state.  The mode
        survives a reload, not a restart; ``status()`` shows it as ``"admin"``.  The hook
        runs with ACTION ``admin-<mode>``, then ``down``/``up`` when usability changed.
        Returns the uplink's status entry; raises ValueError (one sentence) for an unknown
        uplink or mode."""
        names = [u.name for u in self.cfg.uplinks]
        if not name or name not in names:
            raise ValueError(f"no uplink named {name!r}; the uplinks are {', '.join(n for n in names if n)}")
        if mode not in ADMIN_MODES:
            raise ValueError(f"{mode!r} is not an administrative mode; use up, down or auto")
        h = self.health[names.index(name)]
        if h.admin != mode:
            was, h.admin = h.admin, mode
            self.log(f"uplink {name}: administrative mode {mode} (was {was})" +
                     {"down": "; its flows move", "up": "; used whatever link and probes say",
                      "auto": "; link and probes decide"}[mode])
            self._hook(h, f"admin-{mode}", f"administrative mode {mode} (was {was})", self.clock())
            self.apply()
        return [s for s in self.status() if s["name"] == name][0]

    # ---------------------------------------------------------------- hooks
    def _hook(self, h: UplinkHealth, action: str, reason: str, now: float) -> None:
        s = self.s[h.index]
        if not s["hook"]:
            return
        u = self.cfg.uplinks[h.index]
        addr = u.gateway or (u.probe_targets[0] if u.probe_targets else None)
        family = "" if addr is None else "ipv%d" % ipaddress.ip_address(addr).version
        st = h.window_stats()
        usable = self._usable[h.index] if self._usable is not None else h.usable
        env = {"PATH": os.environ.get("PATH") or HOOK_PATH, "ACTION": action, "UPLINK": h.name, "DEVICE": h.dev,
               "FAMILY": family, "GATEWAY": u.gateway or "", "REASON": reason, "ADMIN": h.admin,
               "USABLE": "1" if usable else "0", "DEGRADED": "1" if h.degraded else "0",
               "RTT_MS": f"{st['rtt_ms']:.3f}" if "rtt_ms" in st else "",
               "LOSS": f"{st['loss']:.4f}" if "loss" in st else ""}
        self.hooks.fire(h.index, s["hook"], s["hook_timeout_s"], env, now)

    # ---------------------------------------------------------------- decisions
    def chars(self) -> np.ndarray:
        """V_n per uplink: configured, measured where [monitor] measure says so, and for a
        degraded uplink at least what its probes see (see the module docstring)."""
        m = characteristics_matrix(self.cfg)
        for h in self.health:
            for name, value in h.measured.items():
                m[h.index, C.CHAR_INDEX[name]] = value
            if h.degraded:
                st = h.window_stats()
                for name, key in (("loss", "loss"), ("queueing_delay", "rtt_ms"), ("jitter", "jitter")):
                    if key in st:
                        j = C.CHAR_INDEX[name]
                        m[h.index, j] = max(m[h.index, j], st[key])
        return m

    def metrics(self) -> np.ndarray:
        """The uplinks' metrics (lower first), a degraded one after every healthy one."""
        return np.array([u.metric + (DEGRADED_RANK if h.degraded else 0.0)
                         for u, h in zip(self.cfg.uplinks, self.health)], np.float64)

    def usable_mask(self) -> np.ndarray:
        """Configured usable, link up, probes answered (or forced up), and a next hop to send
        to.  When the probes alone would leave no uplink at all, the ones whose link is up and
        whose next hop is known stay in use: every uplink failing at the same moment is more
        likely the probes' problem than the world's (mwan3 and OPNsense keep a gateway too).
        An uplink administratively down is never kept."""
        nh = self.next_hop_known()
        mask = np.array([u.usable and not u.empty and h.usable and bool(nh[h.index])
                         for u, h in zip(self.cfg.uplinks, self.health)], np.uint8)
        suspect = []
        if not mask.any():
            suspect = [h.index for u, h in zip(self.cfg.uplinks, self.health)
                       if u.usable and not u.empty and h.admin == "auto" and h.link_up and not h.probe_ok and nh[h.index]]
            mask[suspect] = 1
        if bool(suspect) != bool(self.suspect):
            self.log("every uplink looks down by its probes alone; keeping " +
                     ", ".join(self.cfg.uplinks[i].name for i in suspect) + " in use until probes answer"
                     if suspect else "probes answer again; uplinks are judged by them again")
        self.suspect = suspect
        return mask

    def _why(self, h: UplinkHealth) -> str:
        if h.removed:
            return h.reason
        return "admin down" if h.admin == "down" else h.reason or "no next hop"

    def apply(self, cfg=None, selector=None) -> None:
        """Push the usable mask, V_n and metrics into the selector; move the flows of every
        uplink that stopped being usable, in one rebind each; run the hooks of the uplinks
        that went down or came up.  With ``cfg`` and ``selector``: a reloaded policy (the
        flowbase, the probes and the administrative modes are kept)."""
        if cfg is not None:
            # a slot whose uplink changed (added or removed by the reload) starts afresh
            changed = [i for i, (a, b) in enumerate(zip(self.cfg.uplinks, cfg.uplinks)) if a.name != b.name]
            self.cfg = cfg
            self.m.update({k: v for k, v in cfg.monitor.items() if k not in ("control_socket", "probes", "window")})
            self.s = self._settings()
            for i in changed:
                self._slot(i, self.clock())
            for h, s in zip(self.health, self.s):
                if s["window"] != h.results.maxlen:
                    h.results = collections.deque(h.results, maxlen=s["window"])
                h.need = max(1, min(getattr(cfg.uplinks[h.index], "reliability", 1), h.targets))
        if selector is not None:
            self.selector = selector
            self._usable = None
        before = self._usable
        usable = self.usable_mask()
        self.selector.update(self.chars(), usable, self.metrics())
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
                h.went_down(now, self.s[h.index]["hold_down_s"])
                t0 = time.perf_counter()
                moved = self.flows.rebind(h.index, table)
                dt = (time.perf_counter() - t0) * 1000
                self.moved_flows += int(moved)
                why = self._why(h)
                self.moves.append({"uplink": h.name, "reason": why, "flows": int(moved),
                                   "rebind_ms": round(dt, 3), "at": time.time()})
                self.moves = self.moves[-20:]
                self.log(f"uplink {h.name} down ({why}): {moved} flows moved in "
                         f"{dt:.2f} ms; hold-down {h.hold:g} s")
                self._hook(h, "down", why, now)
            else:
                h.came_up(now)
                self.log(f"uplink {h.name} up; new flows may use it"
                         + (f", flows return in {self.m['failback_hold_s']:g} s"
                            if self.m["failback"] == "return" else ""))
                if self.m["failback"] == "return":
                    self.failback_at = now + self.m["failback_hold_s"]
                self._hook(h, "up", "administrative mode up" if h.admin == "up" else
                           "link up and probes answer" if h.index not in self.suspect else
                           "kept: every uplink's probes fail", now)

    def _failback(self) -> None:
        """Flows return to their best uplink; load-balanced flows stay where they are (their
        choice table entry names one uplink, and moving them all there would undo the spread)."""
        table = self.selector.choice_table().copy()
        lb = getattr(self.selector, "lb_slot", None)
        moved = 0
        for h in self.health:
            if lb is not None:
                table[lb, :] = h.index
            moved += self.flows.rebind(h.index, table)
        self.log(f"failback: flows rebound to their best uplink ({moved} looked at)")

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
        """Per uplink: usable, link, probes, why it is out, the administrative mode
        ("admin": auto, up or down), degraded and why, RTT and loss, V_n in use, flows, the
        hook's state."""
        counts = self.flows.uplink_counts(len(self.cfg.uplinks))
        chars = self.chars()
        usable = self._usable if self._usable is not None else self.usable_mask()
        out = []
        for h, u in zip(self.health, self.cfg.uplinks):
            if u.empty:                               # a free uplink slot (engine/slots.py)
                continue
            st = h.window_stats()
            if h.admin == "down":
                reason = "admin down"
            elif h.index in self.suspect:
                reason = "kept: every uplink's probes fail"
            elif h.admin == "up":
                reason = "admin up" + (f" (overriding: {h.reason})" if h.reason or not h.probe_ok else "")
            else:
                reason = h.reason if h.reason or usable[h.index] else "no next hop"
            out.append({
                "name": h.name, "device": h.dev, "usable": bool(usable[h.index]),
                "link": "up" if h.link_up else "down", "probes": "ok" if h.probe_ok else "failing",
                "reason": reason, "admin": h.admin,
                "degraded": h.degraded, "degraded_reason": h.degraded_reason if h.degraded else "",
                "reliability": f"{h.need}/{h.targets}",
                "changes": h.changes, "hold_down_s": h.hold,
                "flows": int(counts[h.index]),
                "rtt_ms": round(st["rtt_ms"], 3) if "rtt_ms" in st else None,
                "probe_loss": round(st["loss"], 4) if "loss" in st else None,
                "characteristics": {n: float(chars[h.index, j]) for j, n in enumerate(C.CHAR_NAMES)},
                "measured": {k: round(v, 4) for k, v in sorted(h.measured.items())},
                "queueing_delay_source": h.delay_source if "queueing_delay" in h.measured else None,
                "hook": self.hooks.status(h.index) if self.s[h.index]["hook"] else None,
            })
        return out

    def close(self):
        self.hooks.close()
        for p in self.probers:
            if p is not None:
                p.close()


ConnMgr = ConnectionManager      # the short name (``ConnMgr.set_admin``)
