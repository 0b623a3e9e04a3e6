"""The one engine of ``mmr run`` and ``mmr host``: sources, the poll loop, housekeeping, the
connection manager, the control socket, metrics, the summary line and close.

    inside source ---------> Forwarder.step_inside -----> uplink TxSockets
    (router: LAN ring;          (engine._forward: parse, what is ours, route,
     host: the TUN, the VI)      next hop, MTU, rewrite, send)
    uplink rings ----------> Forwarder.step_uplink(u) --> inside sink
                                                          (router: LAN TxSocket; host: TUN)
    punts (ICMP errors, neighbour resolution) ---------> Python, rate-limited in C

    netlink events ---> State ---> Forwarder tables (MACs, MTUs, gateways, LAN hosts, own
                                   addresses) and the connection manager
    probes, control socket, timers: the same poll loop, never waiting on anything

Several cores (``mmr run``, ``[engine] workers``): this thread is worker 0; workers 1..N-1
(engine/workers.py) run the same Forwarder loop on their own rings, joined per device in a
PACKET_FANOUT group, and take what this thread changes between two batches.

Uplink devices come and go (a modem re-enumerating, PPP redialling, a device missing at
start): netlink names them, and an uplink is bound to its device's name.  A device deleted,
renamed away or re-created under a new index is let go (its rings and sockets closed, the
connection manager moves its flows as on a link down); a device of that name that appears
is opened as it is then (index, MTU, MAC, Ethernet or L3, next hop, IPv4 address for the
translation, the probes' binding) and taken into use once its link, address and next hop
are up.  The kernel guard's rules match devices by name, so they hold for the new device.
The inside's device follows the same way (``Inside.follow_device``; engine/router.py: the
LAN device let go and opened again, flows and uplinks untouched).

The two modes differ only in their inside (engine/router.py: ``Lan``; engine/host.py:
``VirtualInterface``): how it is opened, which addresses are the engine's to deliver, what
the kernel guard (engine/guard.py) keeps the kernel from doing, and their names in the log.

Latency.  A TPACKET_V2 ring hands every frame over on its own, so a lone frame is forwarded
as soon as the loop sees it; after traffic the loop keeps looking (busy-poll, ``spin_us``)
instead of sleeping, so the answer to what it just sent is taken without a wake-up; under
load the loop never sleeps and frames that arrive while it works form the next batch.
"""
from __future__ import annotations

import collections
import ipaddress
import os
import select
import signal
import socket
import threading
import time

import numpy as np

from engine import _forward
from engine import counters as CT
from engine import constants as C
from engine._pipeline import Pipeline
from engine.connmgr import ConnectionManager
from engine.control import ControlServer
from engine.errors import UserError
from engine.translate import Translation, edge_status, make_edge
from engine.guard import KernelGuard
from engine.icmperr import packet_too_big, parameter_problem, time_exceeded
from engine.log import Log
from engine.sdnotify import Notifier
from engine.workers import CALL_TIMEOUT_S
from engine.netlink import Netlink, addr16

IDLE_WAIT_US = 100000    # the longest sleep; timers (probes, expiry, housekeeping) wake it earlier
HOUSEKEEPING_S = 1.0
ADMIN_SAYS = {       # what mmr uplink NAME MODE answers
    "down": "uplink {name} is administratively down: no new flows, its flows moved to the best other uplink "
            "('mmr uplink {name} auto' ends it)",
    "up": "uplink {name} is administratively up: used whatever its link and probes say, now {usable} "
          "('mmr uplink {name} auto' ends it)",
    "auto": "uplink {name} is back under the monitor: its link and probes decide, now {usable}",
}
MAX_FLOWS_ANSWERED = 10000  # a control answer never walks more of the flowbase than this
PROMPT_EVERY_S = 1.0
TIMER = {"summary": "stats_interval"}


def mac_text(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


L3_NEXT_HOP = bytes.fromhex("020000000000")     # an L3 uplink's "next hop known" placeholder
FAMILIES = (4, 6)                                # the order of fw.gw_mac[u] and gw_addr[u]


class Poller:
    """The engine's descriptors: side ones (netlink, probes, control) with a callback each,
    then the sources (rings, TUN), as the struct pollfd array Forwarder.run() waits on."""

    PFD = np.dtype([("fd", "<i4"), ("events", "<i2"), ("revents", "<i2")])

    def __init__(self):
        self.callbacks: dict[int, object] = {}
        self.events: dict[int, int] = {}
        self.sources: list[int] = []
        self._pfd = None

    def register(self, fd: int, events: int, callback) -> None:
        self.events[fd] = events
        self.callbacks[fd] = callback
        self._pfd = None

    def unregister(self, fd: int) -> None:
        if self.callbacks.pop(fd, None) is not None or fd in self.sources:
            self.events.pop(fd, None)
            if fd in self.sources:
                self.sources.remove(fd)
            self._pfd = None

    def add_source(self, fd: int) -> None:
        self.sources.append(fd)
        self._pfd = None

    def array(self) -> tuple[np.ndarray, int]:
        """(pollfd array, number of side descriptors at its start)."""
        if self._pfd is None:
            side = list(self.callbacks)
            pfd = np.zeros(len(side) + len(self.sources), self.PFD)
            pfd["fd"] = side + self.sources
            pfd["events"] = [self.events[fd] for fd in side] + [select.POLLIN] * len(self.sources)
            self._pfd = (pfd, len(side))
        return self._pfd


class Inside:
    """What ``mmr run`` (engine/router.py: ``Lan``) and ``mmr host`` (engine/host.py:
    ``VirtualInterface``) put behind the engine; the defaults do nothing."""

    def __init__(self, mode: str, router: bool, log_prefix: str, default_policy: str):
        self.mode, self.router, self.log_prefix, self.default_policy = mode, router, log_prefix, default_policy

    def devices_needed(self, cfg) -> list[str]:
        return []

    def open(self, dp: "Datapath", batch: int) -> None:
        """Create the inside source and sink; Forwarder.attach them."""

    def tables(self, dp: "Datapath") -> None:
        """Fill the Forwarder's tables that are the inside's (own addresses, LAN hosts)."""

    def apply(self, dp: "Datapath", cfg) -> None:
        """A reloaded policy."""

    def refuse_added(self, dp: "Datapath", cfg, added: list) -> str | None:
        """Why a reloaded policy ``cfg`` may not add the uplinks ``added`` (a sentence), or None."""
        return None

    def guard(self, dp: "Datapath") -> tuple[str, list[str], list[str], dict | None]:
        """(nftables table, devices, rules, sets): what the kernel must leave to mmr."""
        raise NotImplementedError

    def neighbour(self, dp: "Datapath", index: int, addr: bytes) -> None:
        """A neighbour entry changed."""

    def link_event(self, dp: "Datapath", ev: tuple) -> None:
        """A link or address changed (or was resynchronised)."""

    def uplinks_changed(self, dp: "Datapath") -> None:
        """An uplink's device came or went (dp.up_index changed)."""

    def follow_device(self, dp: "Datapath") -> None:
        """Links changed: the inside's own device vanished or appeared."""

    def status(self, dp: "Datapath") -> dict:
        """What mmr status shows of the inside."""
        return {}

    def resolve(self, dp: "Datapath", addr: bytes) -> None:
        """A frame waits for this inside neighbour's MAC."""

    def punt_port(self, dp: "Datapath", side: int, u: int):
        """(device, TxSocket) an ICMP error goes out of, or (None, None)."""
        return None, None

    def fds(self) -> list[int]:
        return []

    def tx_qdisc_bypass(self, dp: "Datapath", up) -> bool:
        """Whether uplink up's socket skips its device's qdisc (PACKET_QDISC_BYPASS)."""
        return up.qdisc_bypass

    def rings(self) -> list:
        return []

    def ready_line(self, dp: "Datapath") -> str:
        raise NotImplementedError

    def close(self, dp: "Datapath") -> None:
        """Undo what open() did."""


class Datapath:
    """Set up with a config and an inside (``Lan`` or ``VirtualInterface``); ``run()`` until
    SIGINT/SIGTERM or ``duration``; everything it changed is undone when it stops."""

    def __init__(self, cfg, inside, batch: int = 256, stats_interval: float = 60.0, stream=None,
                 spin_us: float | None = None, resolve_wait: float = 3.0, log_level: str = "info",
                 workers: int | None = None):
        if batch < 1 or batch > 4096:
            raise UserError(f"--batch {batch}: use 1 to 4096 frames per batch (default 256)")
        self.cfg, self.inside = cfg, inside
        self.mode = inside.mode
        self.stats_interval = stats_interval
        self.spin_s = (cfg.busy_poll_ms * 1000 if spin_us is None else spin_us) / 1e6
        self.log = Log(stream, name=inside.log_prefix, level=log_level)
        self.notify = Notifier()
        self.stop = False
        self.reload_requested = False
        self.reloads = 0
        self.started = time.time()
        self.last_reload_ok, self.last_reload_success_s = True, self.started  # the start's load (metrics)
        self.closables: list = []
        self.guard = None
        self.poller = Poller()
        self.workers: list = []                   # workers 1..N-1 (engine/workers.py); 0 is this thread
        self.workers_stop = False
        self.gen = 0                              # raised when this thread's Forwarder tables change
        self.punt_queue: collections.deque = collections.deque()
        self.punt_efd = None
        self.netlink = Netlink()
        self.closables.append(self.netlink)
        try:
            self.state = self.netlink.sync()
            # mmr run and mmr host hold uplink_slots uplinks (engine/slots.py): every per-uplink
            # table is sized for them, so mmr reload can add and remove uplinks
            from engine.slots import default_slots, slotted
            n = cfg.uplink_slots if cfg.uplink_slots is not None else default_slots(len(cfg.uplinks))
            cfg = self.cfg = slotted(cfg, n)
            # mmr run starts with the uplinks whose devices exist and takes the others when
            # they appear (a modem still enumerating at boot), its LAN device too (Lan.open);
            # mmr host sizes its virtual interface by its interfaces, so it needs them all
            real = [u for u in cfg.uplinks if not u.empty]
            wait_for = [u for u in real if inside.router and self.state.link(u.device) is None]
            for dev in [u.device for u in real if u not in wait_for] + \
                    ([] if inside.router else inside.devices_needed(cfg)):
                if self.state.link(dev) is None:
                    raise UserError(f"device {dev!r} does not exist; check the device names in the "
                                    f"policy file ('ip link' lists them)")
            for up in wait_for:
                self.log.warning(f"uplink {up.name}: waiting for device {up.device} (it does not exist yet); "
                                 f"it is taken into use when it appears")
            if wait_for and len(wait_for) == len(real):
                self.log.warning("no uplink device exists yet: nothing is forwarded until one appears")
            self.n_up = len(cfg.uplinks)
            self.batch = batch
            self.up_index = [self.state.index(u.device) for u in cfg.uplinks]
            self.pipe = Pipeline(cfg, batch=batch)
            self.fw = _forward.Forwarder(self.pipe, inside.router, self.n_up, batch)
            # RFC 8200 4.2 parameter problems: the router's own kernel parses the hop-by-hop
            # header on receipt, before the guard's prerouting hook, and answers them itself
            # (rate limited per source); mmr drops and counts the packet and does not answer
            # a second time (tests/test_rfc8200.py::test_live_parameter_problem_reaches_mn)
            self.fw.param_problems = False
            self.counters = self.fw.counters          # the one table (engine/counters.py)
            self.translation = Translation(cfg, self.fw, inside.router, self.log)
            self.edge = make_edge(cfg, self.fw, inside.router)
            inside.open(self, batch)
            self.up_rx: list = [None] * self.n_up
            self.up_tx: list = [None] * self.n_up
            for u in range(self.n_up):
                if self.up_index[u] is not None:
                    self._open_uplink(u)
            self.fw.attach(up_rx=self.up_rx, up_tx=self.up_tx)
            self.n_workers = self._workers_wanted(cfg, workers)
            if self.n_workers > 1:
                self._open_workers(batch, explicit=(workers if workers is not None else cfg.workers) is not None)
            self.prompted: dict[tuple[str, bytes], float] = {}
            self.truncated_seen: dict[int, int] = {}
            self.sent_before = [(0, 0)] * self.n_up
            # a next hop per uplink and family (FAMILIES: index 0 IPv4, 1 IPv6, as fw.gw_mac):
            # the DHCP gateway and the RA router may be different hosts on one segment
            self.gw_addr: list = [[None, None] for _ in range(self.n_up)]
            self.gw_auto = [[False, False] for _ in range(self.n_up)]
            for u in range(self.n_up):
                if self.up_rx[u] is not None:
                    self._uplink_next_hop(u)
            self._resolve_gateways(resolve_wait)
            # resolvers pinned to the uplink whose network gave them (RFC 6419 2.3.1): address
            # -> (uplink, where from, expiry on the monotonic clock or None); the config's are
            # in every pipeline's selector already, learned ones (RDNSS) are pushed there
            self.resolvers: dict[bytes, tuple] = {}
            self.resolvers_full_said = False
            self._config_resolvers(cfg)
            self.inside.tables(self)
            self.conn = ConnectionManager(cfg, *self._conn_views(), self.state,
                                          self.next_hop_known, self.log, backlog=self.netlink.qdisc.get)
            self.closables.append(self.conn)
            self.control = ControlServer(cfg.monitor["control_socket"], self.handle_control, self.poller, self.log,
                                         read_group=cfg.monitor.get("control_read_group"))
            self.closables.append(self.control)
            self.metrics = None
            if cfg.monitor["metrics_listen"]:
                from engine.metrics import Metrics
                self.metrics = Metrics(cfg.monitor["metrics_listen"])
                self.closables.append(self.metrics)
        except BaseException:
            self._close_all()
            raise

    # ------------------------------------------------------------------ workers
    def _workers_wanted(self, cfg, override: int | None) -> int:
        """[engine] workers (or --workers); by default the CPUs mmr may use, capped at the
        smallest RX queue count of its devices.  mmr host has one (a TUN has one queue)."""
        want = override if override is not None else getattr(cfg, "workers", None)
        if not self.inside.router:
            if want is not None and want > 1:
                self.log.warning(f"workers = {want} is ignored by mmr host: its TUN device has one "
                                 f"queue, so it runs one worker")
            return 1
        if want is None:
            from engine.workers import default_workers
            return default_workers(self.inside.devices_needed(cfg) + [u.device for u in cfg.uplinks if not u.empty])
        return int(want)

    def _open_workers(self, batch: int, explicit: bool) -> None:
        """Workers 1..N-1, then one fanout group per device, worker 0's ring first.  When the
        count is the default and the kernel cannot make the groups, one worker, with a warning."""
        from engine.workers import Worker, join_fanout

        for k in range(1, self.n_workers):
            w = Worker(k, self, batch)
            self.workers.append(w)
            self.closables.append(w)
        try:
            if self.inside.ring is not None:          # an absent LAN device's group is made when it appears
                join_fanout([self.inside.ring.sock] + [w.in_ring.sock for w in self.workers], self.inside.dev)
            for u, up in enumerate(self.cfg.uplinks):
                if self.up_rx[u] is not None:         # an absent device's group is made when it appears
                    join_fanout([self.up_rx[u].sock] + [w.up_rx[u].sock for w in self.workers], up.device)
        except UserError as exc:
            if explicit:
                raise
            self.log.warning(f"{exc}; one worker instead of {self.n_workers}")
            for w in self.workers:
                self.closables.remove(w)
                w.close()
            self.workers = []
            self.n_workers = 1
            return
        self.punt_efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    # ------------------------------------------------------------------ uplink devices
    def _open_uplink(self, u: int) -> None:
        """This thread's ring and socket on uplink u's device as it is now (its index, MTU,
        MAC, link type), into the Forwarder's tables; the caller attaches them."""
        from engine._ring import ARPHRD_ETHER, RxRing, TxSocket, link_type

        up = self.cfg.uplinks[u]
        link = self.state.link(up.device)
        rx = RxRing(up.device, frames=self.cfg.ring_frames, mtu=link.mtu, capacity=self.batch)
        try:
            # an L3 device (TUN, PPP, raw IP) has no segmentation offload: super-frames must
            # pass its qdisc layer, where the kernel segments them (a bypass would drop them)
            tx = TxSocket(up.device, qdisc_bypass=self.inside.tx_qdisc_bypass(self, up) and
                          link_type(up.device) == ARPHRD_ETHER)
        except BaseException:
            rx.close()
            raise
        self.up_rx[u], self.up_tx[u] = rx, tx
        self.closables += [rx, tx]
        self.up_index[u] = link.index
        self.fw.up_mac[u] = list(link.mac) if len(link.mac) == 6 else 0   # an L3 device has none
        self.fw.up_mtu[u] = link.mtu

    def _uplink_next_hop(self, u: int) -> None:
        """Uplink u's next hop on the device it has now: none needed on an L3 device, a static
        gateway_mac, or the gateway's MAC (static gateway, or "auto": the kernel's default
        route on the device) learned from the neighbour table."""
        up = self.cfg.uplinks[u]
        l3 = self.up_tx[u].l3
        for f, g in enumerate((up.gateway4, up.gateway6)):
            # gateway4 / gateway6 = "auto": the next hop of that family's default route on the device
            self.gw_auto[u][f] = not g and not up.gateway_mac and not l3
            self.gw_addr[u][f] = ipaddress.ip_address(g).packed if g else None
            if self.gw_auto[u][f]:
                self.gw_addr[u][f] = self.state.default_gateway(self.up_index[u], FAMILIES[f])
        self.fw.gw_mac[u] = 0

    def _follow_devices(self) -> None:
        """Each uplink's device as netlink last described it: one deleted (or renamed away)
        is let go; one that appeared, or was re-created under a new index, is taken.  The
        same for the inside's device (router: the LAN's)."""
        self.inside.follow_device(self)
        for u, up in enumerate(self.cfg.uplinks):
            if up.empty:
                continue
            idx = self.state.index(up.device)
            if self.up_index[u] is not None and idx != self.up_index[u]:
                self._uplink_gone(u)
            if self.up_rx[u] is None and idx is not None:
                self._uplink_back(u)

    def _uplink_back(self, u: int) -> None:
        """Uplink u's device appeared (at start it was absent, or it was re-created under a new
        index): rings and sockets on it for every worker (one fanout group), its tables and
        next hop re-read, translation and probes rebound; the connection manager takes it into
        use once its link, address and next hop are there."""
        from engine.workers import join_fanout

        up = self.cfg.uplinks[u]
        theirs: list = []
        try:
            self._open_uplink(u)
            for w in self.workers:
                theirs.append(w.open_uplink(u))
            if self.workers:
                join_fanout([self.up_rx[u].sock] + [rx.sock for rx, _ in theirs], up.device)
        except (OSError, UserError) as exc:
            # gone again before it was opened, or no fanout group: tried again at its next event
            for c in [x for pair in theirs for x in pair] + [self.up_rx[u], self.up_tx[u]]:
                if c is not None:
                    c.close()
                    if c in self.closables:
                        self.closables.remove(c)
            self.up_rx[u] = self.up_tx[u] = self.up_index[u] = None
            self.log.warning(f"uplink {up.name}: device {up.device} appeared but could not be opened "
                             f"({exc}); tried again when it changes")
            return
        self.fw.attach(up_rx=self.up_rx, up_tx=self.up_tx)
        self.on_workers(lambda w: w.attach_uplink(u, *theirs[w.k - 1]))
        self.poller.add_source(self.up_rx[u].fileno())
        self._uplink_next_hop(u)
        if self.up_tx[u].l3:
            self.fw.gw_mac[u] = list(L3_NEXT_HOP)
        elif up.gateway_mac:
            self.fw.gw_mac[u] = list(mac_bytes(up.gateway_mac))
        else:
            for f in range(2):
                if self.gw_addr[u][f] is not None and not self._learn_gateway(u, f):
                    self._prompt(up.device, self.gw_addr[u][f])
        self.conn.device_back(u)
        self.inside.uplinks_changed(self)
        self.log(f"uplink {up.name}: device {up.device} is here (index {self.up_index[u]}, "
                 f"{'L3' if self.up_tx[u].l3 else 'Ethernet'}, MTU {self.state.link(up.device).mtu}); "
                 f"it carries flows once its link, address and next hop are up")
        self.conn.apply()
        self._tables_changed()

    def _conn_views(self):
        """(selector, flowbase) the connection manager works on: this thread's, or with
        several workers every worker's."""
        if not self.workers:
            return self.pipe.selector, self.pipe.flows
        from engine.workers import FlowsFan, SelectorFan
        return SelectorFan(self), FlowsFan(self)

    def on_workers(self, fn) -> list:
        """fn(worker) run by every other worker in its own thread, between two forwarding
        calls; their results (None where a worker failed or did not answer in time)."""
        calls = [w.post(fn, wait=True) if w.failed is None else None for w in self.workers]
        out = []
        for c in calls:
            if c is None:
                out.append(None)
            elif not c.done.wait(CALL_TIMEOUT_S) or c.error is not None:
                out.append(None)
                self.counters[CT.INDEX["internal_errors"]] += 1
                self.log.error(f"a worker did not do {getattr(fn, '__name__', 'its part')}"
                               + (f": {type(c.error).__name__}: {c.error}" if c.error is not None else " in time")
                               + "; forwarding goes on")
            else:
                out.append(c.result)
        return out

    def _tables_changed(self) -> None:
        """This thread's Forwarder tables changed: every worker copies them before its next batch."""
        if self.workers:
            self.gen += 1
            for w in self.workers:
                w.wake()

    def worker_punts(self, recs) -> None:
        """(a worker's thread) its punts, for this thread to send."""
        self.punt_queue.append(recs)
        try:
            os.eventfd_write(self.punt_efd, 1)
        except OSError:
            pass

    def worker_error(self, w, exc, fatal: bool = False) -> None:
        """(a worker's thread) a fault in its control work; fatal: the worker stopped."""
        w.fw.counters[CT.INDEX["internal_errors"]] += 1
        self.log.error(f"internal error in worker {w.k}: {type(exc).__name__}: {exc}; "
                       + ("its share of the flows is not forwarded until mmr restarts" if fatal
                          else "forwarding goes on"))

    def _worker_punts_ready(self, revents: int) -> None:
        try:
            os.eventfd_read(self.punt_efd)
        except OSError:
            pass
        while self.punt_queue:
            self._punts(self.punt_queue.popleft())

    # ------------------------------------------------------------------ neighbours
    def _prompt(self, dev: str, addr: bytes) -> None:
        """Make the kernel resolve addr on dev (at most once a second per address): a
        datagram to the discard port from a socket bound to the device."""
        key = (dev, addr)
        now = time.monotonic()
        if now - self.prompted.get(key, -10.0) < PROMPT_EVERY_S:
            return
        self.prompted[key] = now
        ip = ipaddress.ip_address(addr[12:] if len(addr) == 16 and addr[:12] == bytes(10) + b"\xff\xff" else addr)
        fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        try:
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
                s.setblocking(False)
                s.sendto(b"", (str(ip), 9))
            self.counters[CT.INDEX["neighbour_asked"]] += 1
        except OSError:
            pass

    def _resolve_gateways(self, wait: float) -> None:
        """Each uplink's next-hop MAC: static, or from the neighbour table.  An uplink whose
        link is down at start is left unresolved with a warning (used once it is up and its
        gateway answers); a gateway that does not answer on a link that is up is a start-up
        error."""
        pending = []
        for u, up in enumerate(self.cfg.uplinks):
            if self.up_tx[u] is None:
                continue                      # its device is not there yet: learned when it comes
            if self.up_tx[u].l3:
                # a point-to-point device without a link header: the next hop needs no MAC
                # (the placeholder only says "known"; the socket leaves the header out)
                self.fw.gw_mac[u] = list(L3_NEXT_HOP)
                continue
            if up.gateway_mac:
                self.fw.gw_mac[u] = list(mac_bytes(up.gateway_mac))
                continue
            missing = [fam for f, fam in enumerate(FAMILIES) if self.gw_addr[u][f] is None]
            if len(missing) == 2:
                self.log.warning(f"uplink {up.name} ({up.device}): no default route through it yet "
                                 f"(gateway = \"auto\"); it carries flows once DHCP, an RA or PPP gives one "
                                 f"(or set gateway)")
                continue
            if missing:
                self.log(f"uplink {up.name} ({up.device}): no IPv{missing[0]} next hop yet (no IPv{missing[0]} "
                         f"default route on it); its IPv{missing[0]} flows are dropped until one comes "
                         f"(or set gateway{missing[0]})")
            link = self.state.link(up.device)
            if not link.up:
                self.log.warning(f"uplink {up.name} ({up.device}) is down at start; it will carry "
                                 f"flows once it is up and its gateway answers")
                continue
            pending += [(u, f) for f in range(2) if self.gw_addr[u][f] is not None]
        deadline = time.monotonic() + wait
        while pending:
            for u, f in list(pending):
                if self._learn_gateway(u, f):
                    pending.remove((u, f))
                else:
                    self._prompt(self.cfg.uplinks[u].device, self.gw_addr[u][f])
            if not pending:
                break
            if time.monotonic() > deadline:
                u, f = pending[0]
                up = self.cfg.uplinks[u]
                raise UserError(f"IPv{FAMILIES[f]} gateway {ipaddress.ip_address(self.gw_addr[u][f])} of uplink "
                                f"{up.name!r} does not answer neighbour "
                                f"discovery on {up.device}; check the link and the address, or set "
                                f"gateway{FAMILIES[f]} or gateway_mac")
            select.select([self.netlink.fileno()], [], [], 0.05)
            self.netlink.read()
            self.prompted.clear()

    def _learn_gateway(self, u: int, f: int) -> bool:
        """Take uplink u's family-f (0: IPv4, 1: IPv6) gateway MAC from the state; True when
        it is known."""
        up = self.cfg.uplinks[u]
        if up.gateway_mac or self.gw_addr[u][f] is None or (self.up_tx[u] is not None and self.up_tx[u].l3):
            return bool(self.fw.gw_mac[u, f].any())
        idx = self.state.index(up.device)
        mac = None if idx is None else self.state.neighbour(idx, self.gw_addr[u][f])
        if mac is None:
            return False
        if bytes(self.fw.gw_mac[u, f]) != mac:
            known = bool(self.fw.gw_mac[u, f].any())
            self.fw.gw_mac[u, f] = list(mac)
            if known:
                self.log(f"IPv{FAMILIES[f]} gateway of {up.name} is now {mac_text(mac)}")
        return True

    def _follow_auto_gateways(self) -> bool:
        """gateway4 / gateway6 = "auto": a new default route of that family (DHCP renew,
        another RA router, a PPP peer) gives a new next hop; its MAC is learned again.  True
        if one changed."""
        changed = False
        for u, up in enumerate(self.cfg.uplinks):
            for f, fam in enumerate(FAMILIES):
                if not self.gw_auto[u][f] or self.up_index[u] is None:
                    continue
                gw = self.state.default_gateway(self.up_index[u], fam)
                if gw == self.gw_addr[u][f]:
                    continue
                self.gw_addr[u][f] = gw
                self.fw.gw_mac[u, f] = 0
                changed = True
                if gw is None:
                    self.log.warning(f"uplink {up.name}: its IPv{fam} default route is gone; no IPv{fam} next hop "
                                     f"until another comes")
                else:
                    self.log(f"uplink {up.name}: IPv{fam} next hop {ipaddress.ip_address(gw)} (the kernel's "
                             f"default route)")
                    if not self._learn_gateway(u, f):
                        self._prompt(up.device, gw)
        return changed

    def _next_hop_text(self, u: int, f: int) -> str | None:
        if self.gw_addr[u][f]:
            return str(ipaddress.ip_address(self.gw_addr[u][f]))
        return "point-to-point" if self.up_tx[u] is not None and self.up_tx[u].l3 else None

    def next_hop_known(self) -> np.ndarray:
        """Per uplink: a next hop for at least one family (the other family's flows chosen
        for it are dropped, no_neighbour: README, gateway4 / gateway6)."""
        return np.array([bool(self.fw.gw_mac[u].any()) and self.up_rx[u] is not None
                         for u in range(self.n_up)], bool)

    def _follow_gateways(self) -> None:
        """A gateway that is not known (or went stale and was dropped) is asked for."""
        for u, up in enumerate(self.cfg.uplinks):
            if up.gateway_mac or self.up_rx[u] is None:
                continue
            for f in range(2):
                if self.gw_addr[u][f] is not None and not self._learn_gateway(u, f):
                    self._prompt(up.device, self.gw_addr[u][f])

    # ------------------------------------------------------------------ resolvers
    def _config_resolvers(self, cfg) -> None:
        """[[uplink]] dns: pinned while the policy says so; learned ones stay (the config's
        word wins for an address both name)."""
        self.resolvers = {a: v for a, v in self.resolvers.items() if v[1] != "config"}
        for u, up in enumerate(cfg.uplinks):
            for text in up.dns:
                self.resolvers[addr16(ipaddress.ip_address(text).packed)] = (u, "config", None)

    def _rdnss(self, u: int, servers, router) -> None:
        """An RA on uplink u named resolvers (RFC 8106): pinned to u for their lifetime (0:
        withdrawn; all ones: for good); a router elsewhere naming the same address moves it."""
        up = self.cfg.uplinks[u]
        now = time.monotonic()
        where = "ra " + (str(ipaddress.ip_address(router)) if router else "(unknown router)")
        changed = False
        for addr, life in servers:
            ip = ipaddress.ip_address(addr)
            if ip.ipv4_mapped or ip.is_multicast or ip.is_unspecified or ip.is_loopback:
                continue                          # an RA names IPv6 resolvers; nothing else is pinned
            have = self.resolvers.get(addr)
            text = str(ip)
            if have is not None and have[1] == "config":
                continue                          # the operator's word stands
            if life == 0:
                if have is not None and have[0] == u:
                    del self.resolvers[addr]
                    changed = True
                    self.log(f"uplink {up.name}: resolver {text} withdrawn by its router")
                continue
            if have is None and len(self.resolvers) >= C.MAX_RESOLVERS:
                if not self.resolvers_full_said:
                    self.log.warning(f"uplink {up.name}: resolver {text} from a router advertisement not "
                                     f"pinned: {C.MAX_RESOLVERS} resolvers are pinned already")
                    self.resolvers_full_said = True
                continue
            if have is None or have[0] != u:
                changed = True
                self.log(f"uplink {up.name}: resolver {text} learned from a router advertisement ({where}), "
                         f"pinned to it")
            self.resolvers[addr] = (u, where, None if life == 0xFFFFFFFF else now + life)
        if changed:
            self._push_resolvers()

    def _expire_resolvers(self) -> None:
        now = time.monotonic()
        gone = [a for a, (_, _, exp) in self.resolvers.items() if exp is not None and exp <= now]
        for a in gone:
            u = self.resolvers.pop(a)[0]
            self.log(f"uplink {self.cfg.uplinks[u].name}: resolver {ipaddress.ip_address(a)} expired "
                     f"(no router advertisement renewed it)")
        if gone:
            self._push_resolvers()

    def _push_resolvers(self) -> None:
        """Into this thread's selector and every worker's (between two of their batches)."""
        pairs = [(a, u) for a, (u, _, _) in self.resolvers.items()]
        self.pipe.selector.set_resolvers(pairs)
        for w in self.workers:
            w.post(lambda w, p=pairs: w.pipe.selector.set_resolvers(p))

    def resolver_table(self) -> dict:
        """Per uplink: its pinned resolvers, where each came from, seconds left (None: for good)."""
        now = time.monotonic()
        out = {u.name: [] for u in self.cfg.uplinks if not u.empty}
        for a, (u, where, exp) in sorted(self.resolvers.items(), key=lambda kv: (kv[1][0], kv[0])):
            text = ipaddress.ip_address(a)
            text = text.ipv4_mapped or text
            out[self.cfg.uplinks[u].name].append({"address": str(text), "from": where,
                                                  "expires_s": None if exp is None else round(max(0.0, exp - now))})
        return out

    # ------------------------------------------------------------------ netlink
    def _netlink_events(self, revents: int) -> None:
        links = gateways = False
        known_before = self.next_hop_known()
        events = self.netlink.read()
        if any(ev[0] in ("link", "gone", "resync") for ev in events):
            self._follow_devices()          # the state is the batch's last word: devices first
        for ev in events:
            kind = ev[0]
            if kind == "neigh":
                _, index, addr = ev
                self.inside.neighbour(self, index, addr)
                if index in self.up_index:
                    gateways = True
            elif kind == "route":
                self.inside.link_event(self, ev)
                gateways = self._follow_auto_gateways() or gateways
            elif kind == "rdnss":
                if ev[1] in self.up_index:
                    self._rdnss(self.up_index.index(ev[1]), ev[2], ev[3])
            elif kind in ("link", "addr", "resync"):
                links = True
                link = self.state.links.get(ev[1]) if kind == "link" else None
                if link is not None and ev[1] in self.up_index:   # (gone again later in the batch: None)
                    u = self.up_index.index(ev[1])
                    self.fw.up_mtu[u] = link.mtu
                    if link.mac and len(link.mac) == 6:
                        self.fw.up_mac[u] = list(link.mac)
                self.inside.link_event(self, ev)
            elif kind == "gone":
                links = True
                self.inside.link_event(self, ev)
        if gateways:
            before = known_before
            for u in range(self.n_up):
                for f in range(2):
                    if not self._learn_gateway(u, f) and self.fw.gw_mac[u, f].any() and \
                            not self.cfg.uplinks[u].gateway_mac:
                        idx = self.up_index[u]
                        if idx is not None and self.state.neighbour(idx, self.gw_addr[u][f]) is None:
                            self.fw.gw_mac[u, f] = 0      # the gateway's entry failed: not usable
            if (self.next_hop_known() != before).any():
                self.conn.apply()
        if links:
            self.conn.links_changed()
        self._tables_changed()

    def _uplink_gone(self, u: int, why: str | None = None) -> None:
        """Uplink u's device was deleted (or renamed, or re-created under a new index): its
        rings and sockets (every worker's, so its fanout group) closed; the connection
        manager moves its flows as on a link down."""
        up = self.cfg.uplinks[u]
        if self.up_rx[u] is None:
            self.up_index[u] = None
            return
        self.log(why or f"device {up.device} of uplink {up.name} disappeared; the other devices keep "
                        f"forwarding, and {up.name} is taken into use again when a device {up.device} is back")
        self._read_ring_drops()
        self.sent_before[u] = self.uplink_sent(u)
        self.on_workers(lambda w: w.detach_uplink(u))
        self.fw.detach_uplink(u)
        self.poller.unregister(self.up_rx[u].fileno())
        for c in (self.up_rx[u], self.up_tx[u]):
            c.close()
            if c in self.closables:
                self.closables.remove(c)
        self.up_rx[u] = self.up_tx[u] = None
        self.up_index[u] = None
        self.inside.uplinks_changed(self)

    # ------------------------------------------------------------------ punts
    def _punts(self, recs=None) -> None:
        """ICMP errors and neighbour resolutions the compiled steps asked for (this thread's
        Forwarder's, or recs: another worker's)."""
        sent = 0
        for p in (self.fw.take_punts() if recs is None else recs):
            kind, side, u = int(p["kind"]), int(p["side"]), int(p["uplink"])
            if kind == _forward.KIND_NEIGHBOUR:
                self.inside.resolve(self, bytes(p["addr"]))
                continue
            dev, tx = self.inside.punt_port(self, side, u)
            if tx is None:
                continue
            frame = bytes(p["data"][:p["caplen"]])
            l3, fam = int(p["l3_off"]), int(p["family"])
            ip6, ip4 = self.my_ip(dev)
            mac = bytes(self.state.link(dev).mac) if self.state.link(dev) else None
            if mac is not None and len(mac) != 6:
                mac = bytes(6)            # an L3 device: the header is left out when it is sent
            if mac is None or len(frame) < l3 + 20:
                continue
            if kind == _forward.KIND_TOO_BIG:
                if fam == 4 and not frame[l3 + 6] & 0x40:
                    continue              # IPv4 without DF: mmr does not fragment; dropped, counted
                reply = packet_too_big(frame, l3, fam, mac, int(p["mtu"]), ip6, ip4)
            elif kind == _forward.KIND_PARAM_PROBLEM:
                reply = parameter_problem(frame, l3, fam, mac, int(p["mtu"]), ip6)    # mtu: the pointer
            else:
                reply = time_exceeded(frame, l3, fam, mac, ip6, ip4)
            if reply is not None:
                sent += tx.send_frames([reply])
        self.counters[CT.INDEX["icmp_sent"]] += sent

    def my_ip(self, dev: str) -> tuple[bytes | None, bytes | None]:
        """(first global IPv6, first IPv4) of dev: the source of the ICMP errors sent there."""
        idx = self.state.index(dev)
        addrs = self.state.addresses(idx) if idx is not None else []
        a6 = [a.packed for a in addrs if a.version == 6 and not a.is_link_local]
        a4 = [a.packed for a in addrs if a.version == 4]
        return (a6[0] if a6 else None, a4[0] if a4 else None)

    # ------------------------------------------------------------------ loop
    def install_signals(self) -> dict:
        """SIGINT/SIGTERM: stop (handing the packets back to the kernel first); SIGHUP: reload."""
        def on_stop(signum, frame):
            self.stop = True

        def on_hup(signum, frame):
            self.reload_requested = True

        old = {s: signal.signal(s, on_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
        return old

    def run(self, duration: float | None = None) -> dict:
        old = self.install_signals()
        fw = self.fw
        guarded = False
        try:
            self.poller.register(self.netlink.fileno(), select.POLLIN, self._netlink_events)
            for fd, u in self.conn.fds().items():
                self.poller.register(fd, select.POLLIN, lambda ev, u=u: self.conn.probe_readable(u))
            for fd in self.inside.fds() + [r.fileno() for r in self.up_rx if r is not None]:
                self.poller.add_source(fd)
            if self.workers:
                self.poller.register(self.punt_efd, select.POLLIN, self._worker_punts_ready)
            table, devices, rules, sets = self.inside.guard(self)
            self.guard = KernelGuard(table, devices, rules, self.log, sets)
            start = self.guard.take_over()           # realtime: mmr forwards from here on
            guarded = True
            fw.t_start = start
            fw.t_end = float("inf")
            if self.workers:
                self._tables_changed()
                for w in self.workers:
                    w.start()
            ready = False
            t0 = time.monotonic()
            next_house = t0 + HOUSEKEEPING_S
            next_stats = t0 + (self.stats_interval or 0)
            end_at = None                     # realtime: when mmr hands back to the kernel
            while True:
                now = time.monotonic()
                due = [next_house, self.conn.next_due(now), self.control.next_due(now),
                       now + IDLE_WAIT_US / 1e6]
                if self.stats_interval:
                    due.append(next_stats)
                if not ready:
                    due.append(now + max(0.0, start - time.time()))
                if end_at is not None:
                    due.append(now + max(0.0, end_at + 0.05 - time.time()))
                pfd, n_side = self.poller.array()
                fw.run(pfd, n_side, max(0.0, min(due) - now) * 1e6, self.spin_s * 1e6)
                if fw.punt_n:
                    self._safely(self._punts)
                for i in np.flatnonzero(pfd["revents"]):
                    fd, ev = int(pfd["fd"][i]), int(pfd["revents"][i])
                    cb = self.poller.callbacks.get(fd)
                    if cb is not None:
                        self._safely(cb, ev)
                    elif ev & select.POLLNVAL:
                        self.poller.unregister(fd)
                    elif ev & (select.POLLERR | select.POLLHUP):
                        self._source_error(fd)
                pfd["revents"] = 0
                now = time.monotonic()
                self._safely(self.conn.tick, now)
                self.control.tick(now)
                self.notify.watchdog(now)
                if not ready and time.time() >= start:
                    ready = True
                    line = self.inside.ready_line(self)
                    self.log(line)
                    self.notify.send(READY=1, STATUS=line)
                if self.reload_requested:
                    self.reload_requested = False
                    self._safely(lambda: self.log(f"SIGHUP: {self.reload()['message']}"))
                if now >= next_house:
                    next_house = now + HOUSEKEEPING_S
                    self._safely(self._housekeeping)
                if self.stats_interval and now >= next_stats:
                    next_stats = now + self.stats_interval
                    line = self.summary_line()
                    self.log(line)
                    self.notify.send(STATUS=line)
                if duration is not None and now - t0 >= duration:
                    self.stop = True
                if self.stop and end_at is None:
                    self.notify.send(STOPPING=1)
                    end_at = self.guard.hand_back()
                    fw.t_end = end_at
                    self._tables_changed()
                if end_at is not None and time.time() >= end_at + 0.05:
                    break                     # every frame mmr owned is out; the kernel has the rest
        finally:
            self._stop_workers()
            try:
                if self.guard is not None:
                    self.guard.close()
                    self.guard = None
            finally:
                for s, h in old.items():
                    signal.signal(s, h)
                self._read_ring_drops()
                if guarded:                           # nothing to sum up when it never started
                    self.log(self.summary_line())
                self.close()
        return CT.snapshot(self.counters)

    def _stop_workers(self) -> None:
        self.workers_stop = True
        for w in self.workers:
            w.join()

    def _source_error(self, fd: int) -> None:
        """A ring reports a socket error (ENETDOWN after its device went down and up):
        reading SO_ERROR clears it; the ring stays (a vanished device is netlink's to say)."""
        for r in [r for r in self.up_rx if r is not None] + self.inside.rings():
            if r.fileno() == fd:
                try:
                    r.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                except OSError:
                    self.poller.unregister(fd)
                return

    def _safely(self, fn, *args) -> None:
        """Control work (netlink, probes, punts, timers, control socket): a fault there is
        logged and counted, and the forwarding goes on."""
        try:
            fn(*args)
        except Exception as exc:
            self.counters[CT.INDEX["internal_errors"]] += 1
            self.log.error(f"internal error in {getattr(fn, '__name__', 'a handler')}: "
                     f"{type(exc).__name__}: {exc}; forwarding goes on")

    def _housekeeping(self) -> None:
        self._follow_gateways()
        self._expire_resolvers()
        now = time.time()
        self.translation.expire(now)
        if self.edge is not None:
            self.edge.expire(now)
        self.pipe.expire(now)
        for w in self.workers:
            w.post(lambda w: w.pipe.expire(now))
        self._tables_changed()
        self._read_ring_drops()
        stale = time.monotonic() - 10
        for k in [k for k, t in self.prompted.items() if t < stale]:
            del self.prompted[k]
        if self.conn.m["measure"]:
            self.netlink.request_qdisc()
        if self.metrics is not None:
            self.metrics.publish(self.snapshot())

    def _read_ring_drops(self) -> None:
        """PACKET_STATISTICS resets on read: add the kernel's ring-full drops and what the
        rings could not take whole."""
        rings = [r for r in self.up_rx if r is not None] + self.inside.rings()
        rings += [r for w in self.workers for r in w.rings]
        drops = 0
        for r in rings:
            try:
                drops += r.kernel_stats()["drops"]
            except OSError:
                pass
        self.counters[CT.INDEX["ring_drops"]] += drops
        seen_now = {}
        for r in rings:
            seen = self.truncated_seen.get(id(r), 0)
            self.counters[CT.INDEX["truncated"]] += int(r.truncated) - seen
            seen_now[id(r)] = int(r.truncated)
        self.truncated_seen = seen_now          # a closed ring's id may be a new ring's

    SUMMARY = ["rx_inside", "rx_uplink", "tx_uplink", "tx_inside", "kernel", "handover", "csum_finished",
               "super_frames", "icmp_sent", "ring_drops", "tx_errors"]
    SUMMARY_NONZERO = ["untrusted_option", "reserved_preference"]     # in the line only when not 0

    def summary_line(self) -> str:
        """One logfmt line: the main counters, packets per uplink, flows, all drops, every non-zero drop reason."""
        t = self.table()
        per = " ".join(f"up_{u.name}={self.uplink_sent(i)[0]}" for i, u in enumerate(self.cfg.uplinks)
                       if not u.empty)
        d = CT.drops(t)
        drops = " ".join(f"drop_{k}={v}" for k, v in d.items() if v)
        drops += "".join(f" {k}={int(t[CT.INDEX[k]])}" for k in self.SUMMARY_NONZERO if t[CT.INDEX[k]])
        return " ".join(x for x in (CT.logfmt(t, self.SUMMARY, with_drops=False), per,
                                    f"flows={self.n_flows()} drops={sum(d.values())}", drops) if x)

    def uplink_sent(self, u: int) -> tuple[int, int]:
        """(packets, bytes) sent on uplink u so far, its device gone or not."""
        p, b = self.sent_before[u]
        for tx in [self.up_tx[u]] + [w.up_tx[u] for w in self.workers]:
            if tx is not None:
                p, b = p + int(tx.sent), b + int(tx.bytes)
        return p, b

    def table(self) -> np.ndarray:
        """The one counter table: every worker's summed (this thread's holds the control
        work's counts too)."""
        t = self.counters.copy()
        for w in self.workers:
            t += w.fw.counters
        return t

    def n_flows(self) -> int:
        return len(self.pipe.flows) + sum(w.nflows for w in self.workers)

    def worker_table(self) -> list[dict]:
        """Per worker: its main counters and flows (status)."""
        keys = ["rx_inside", "rx_uplink", "tx_uplink", "tx_inside", "kernel", "tx_errors"]
        out = []
        for k, (fw, flows) in enumerate([(self.fw, len(self.pipe.flows))] +
                                        [(w.fw, w.nflows) for w in self.workers]):
            row = {"worker": k, "flows": int(flows)}
            row.update({n: int(fw.counters[CT.INDEX[n]]) for n in keys})
            out.append(row)
        return out

    # ------------------------------------------------------------------ control
    def reload(self) -> dict:
        """Re-read the policy file.  A valid file replaces classification and selection at
        once and keeps the flowbase; an invalid one is rejected and the old policy runs on."""
        from engine.config import load_config
        from engine.errors import ConfigError

        self.last_reload_ok = False               # until the new policy is applied (metrics)
        path = None if self.cfg.path.startswith("<") else self.cfg.path
        try:
            new = load_config(path, default=self.inside.default_policy)
        except ConfigError as exc:
            return {"ok": False, "message": f"rejected, the old policy keeps running: {exc}"}
        old = self.cfg
        refused = "rejected, the old policy keeps running: "

        def wiring(u):
            return (u.device, u.gateway, u.gateway4, u.gateway6, u.gateway_mac, u.nat, u.nat6, u.npt_prefix, u.edge)
        running = {u.name: u for u in old.uplinks if not u.empty}
        names = {u.name for u in new.uplinks}
        added = [u for u in new.uplinks if u.name not in running]
        removed = [k for k, u in enumerate(old.uplinks) if not u.empty and u.name not in names]
        rewired = [u.name for u in new.uplinks if u.name in running and wiring(u) != wiring(running[u.name])]
        if rewired:
            return {"ok": False, "message": refused + f"the device, gateways, translation or edge of uplink "
                                                      f"{', '.join(rewired)} changed; that needs a restart "
                                                      f"(or remove it in one reload and add it in the next)"}
        if not (new.lan == old.lan and new.option_type == old.option_type and new.host == old.host
                and new.nat_ports == old.nat_ports and new.routed_prefixes == old.routed_prefixes
                and new.edge_capacity == old.edge_capacity and new.forwards == old.forwards):
            return {"ok": False, "message": refused + "the LAN device, nat_ports, routed_prefixes, "
                                                      "edge_capacity, [[forward]], the option type or [host] "
                                                      "changed; those need a restart"}
        why = self.inside.refuse_added(self, new, added)     # mmr host: nat6, vi0's MTU, the devices
        if why is not None:
            return {"ok": False, "message": refused + why}
        for up in added:
            why = self.translation.missing(up)
            if why is None and self.inside.router and self.edge is None and up.edge == "stateful":
                why = (f"uplink {up.name} has edge = \"stateful\" but mmr started without the stateful "
                       f"edge (every uplink open); that needs a restart")
            if why is not None:
                return {"ok": False, "message": refused + why}
        from engine.slots import slot_names, slotted
        try:
            new = slotted(new, self.n_up, slot_names(old))
        except UserError as exc:
            return {"ok": False, "message": refused + str(exc)}
        if len(new.lan_prefixes) > self.fw.lan_net.shape[0]:
            return {"ok": False, "message": f"rejected, the old policy keeps running: more than "
                                            f"{self.fw.lan_net.shape[0]} lan_prefixes"}
        try:
            self.control.set_read_group(new.monitor.get("control_read_group"))
        except (UserError, OSError) as exc:
            return {"ok": False, "message": f"rejected, the old policy keeps running: {exc}"}
        # removed uplinks first, under the old policy: their flows move to the others (as
        # when a device vanishes: counted, listed in the failovers), then their rings close
        for k in removed:
            self._probe_fds(k, False)             # before its sockets close (their numbers get reused)
            self.conn.remove(k)
            self.translation.removing(k)
            self._uplink_gone(k, f"uplink {old.uplinks[k].name} is removed by the reload; its flows moved")
        self.pipe.apply(new)                      # new rules and selector; flows kept
        self.fw.set_strip(new)                    # [[uplink]] strip_option
        # every other worker takes the new policy and then waits, so that its new selector
        # gets the usable mask and measurements (queued by conn.apply) before its next batch
        gate = threading.Event()
        for w in self.workers:
            w.post(lambda w: (w.pipe.apply(new), w.fw.set_strip(new), gate.wait(CALL_TIMEOUT_S)))
        self.cfg = new
        if self.edge is not None and self.inside.router:
            # an added uplink's slot takes its own edge mode (workers copy it at their sync)
            self.fw.set_edge(self.edge, [int(u.edge == "stateful") for u in new.uplinks])
        changed = [k for k, (a, b) in enumerate(zip(old.uplinks, new.uplinks)) if a.name != b.name]
        for k in changed:
            self._reslot(k)
            self._probe_fds(k, False)
        self._config_resolvers(new)               # the new selectors have the config's: learned ones back
        self._push_resolvers()
        try:
            self.conn.apply(new, self._conn_views()[0])  # usable mask and measurements into it at once
        finally:
            gate.set()
        self.inside.apply(self, new)
        if changed:
            for k in changed:                     # the new uplinks' probes (conn.apply made them)
                self._probe_fds(k, True)
            self._uplinks_reloaded(changed)
        self._tables_changed()
        self.reloads += 1
        self.last_reload_ok, self.last_reload_success_s = True, time.time()
        return {"ok": True, "message": f"policy reloaded from {new.path} ({self.n_flows()} flows kept"
                + "".join(f"; {w} {', '.join(n)}" for w, n in (("added", [u.name for u in added]),
                                                              ("removed", [old.uplinks[k].name for k in removed]))
                          if n) + ")"}

    def _probe_fds(self, k: int, on: bool) -> None:
        """Uplink slot k's probe sockets into the poll set, or out of it."""
        p = self.conn.probers[k]
        for fd in (p.fds() if p is not None else []):
            if on:
                self.poller.register(fd, select.POLLIN, lambda ev, u=k: self.conn.probe_readable(u))
            else:
                self.poller.unregister(fd)

    def _reslot(self, k: int) -> None:
        """Slot k's uplink changed in a reload (self.cfg is the new policy): nothing of the
        old one stays there (next hop, resolvers learned, translation, proxy, counts)."""
        self.gw_addr[k], self.gw_auto[k] = [None, None], [False, False]
        self.fw.gw_mac[k] = 0
        self.sent_before[k] = (0, 0)
        self.resolvers = {a: v for a, v in self.resolvers.items() if v[0] != k}
        p = self.translation.proxies.pop(k, None)
        if p is not None:
            self.poller.unregister(p.fileno())
            p.close()
            if p in self.closables:
                self.closables.remove(p)
        gone = self.translation.reslot(k, self.cfg)
        if gone:
            self.log(f"{gone} translation mappings of the removed uplink are gone")

    def _uplinks_reloaded(self, slots: list[int]) -> None:
        """After a reload that added or removed uplinks: the kernel guard covers the devices
        of the uplinks there are now; an added uplink whose device exists is opened at once
        (else when it appears, as an uplink missing at start)."""
        if self.guard is not None:
            _, devices, rules, _ = self.inside.guard(self)
            self.guard.set_devices(devices, rules)
        self.inside.uplinks_changed(self)
        for k in slots:
            up = self.cfg.uplinks[k]
            if up.empty:
                continue
            if self.state.index(up.device) is not None:
                self._uplink_back(k)
            else:
                self.log.warning(f"uplink {up.name}: waiting for device {up.device} (it does not exist "
                                 f"yet); it is taken into use when it appears")

    def snapshot(self) -> dict:
        names = [u.name for u in self.cfg.uplinks]
        t = self.table()
        return {"uplinks": self.conn.status(), "flows": self.n_flows(),
                "counters": CT.snapshot(t), "drops": CT.drops(t),
                "uplink_packets": {n: self.uplink_sent(i)[0] for i, n in enumerate(names) if n},
                "uplink_bytes": {n: self.uplink_sent(i)[1] for i, n in enumerate(names) if n},
                "reload": {"successful": self.last_reload_ok, "success_time": self.last_reload_success_s,
                           "reloads": self.reloads}}

    def handle_control(self, req: dict) -> dict:
        cmd = req["cmd"]
        if cmd == "ping":
            return {"ok": True}
        if cmd == "status":
            snap = self.snapshot()
            slot = {u.name: k for k, u in enumerate(self.cfg.uplinks) if not u.empty}
            for u in snap["uplinks"]:
                u["ifindex"] = self.up_index[slot[u["name"]]]   # None: its device is absent (waited for)
            return {"ok": True, "policy": self.cfg.path, "uptime_s": round(time.time() - self.started, 1),
                    "reloads": self.reloads, "flows": snap["flows"], "uplinks": snap["uplinks"],
                    "failovers": self.conn.moves, "moved_flows": self.conn.moved_flows,
                    "mode": self.mode, "counters": snap["counters"], "drops": snap["drops"],
                    **self.inside.status(self),
                    "workers": self.worker_table(),
                    "translation": self.translation.status(),
                    "next_hops": {u.name: self._next_hop_text(k, 1) or self._next_hop_text(k, 0)
                                  for k, u in enumerate(self.cfg.uplinks) if not u.empty},
                    "resolvers": self.resolver_table(),
                    "edge": edge_status(self.cfg, self.edge),
                    "next_hops_by_family": {u.name: {"ipv4": self._next_hop_text(k, 0),
                                                     "ipv6": self._next_hop_text(k, 1)}
                                            for k, u in enumerate(self.cfg.uplinks) if not u.empty}}
        if cmd == "flows":
            from engine.replay import address_text

            names = [u.name for u in self.cfg.uplinks]
            want = req.get("uplink")
            if want is not None and (not want or want not in names):
                return {"ok": False, "error": f"no uplink named {want!r}; the uplinks are {', '.join(n for n in names if n)}"}
            limit = req.get("limit")
            limit = 1000 if limit is None else min(int(limit), MAX_FLOWS_ANSWERED)
            uplink = -1 if want is None else names.index(want)
            recs = self.pipe.flows.dump(limit, uplink)       # walks at most `limit` matches
            total = int(self.pipe.flows.uplink_counts(len(names))[uplink]) if want is not None else len(self.pipe.flows)
            worker_of = [0] * len(recs)
            for k, res in enumerate(self.on_workers(lambda w: (w.pipe.flows.dump(limit, uplink),
                                                               w.pipe.flows.uplink_counts(len(names))[uplink]
                                                               if want is not None else len(w.pipe.flows))), 1):
                if res is None:
                    continue
                more, n = res
                total += int(n)
                take = max(0, limit - len(recs))
                if take and len(more):
                    recs = np.concatenate([recs, more[:take]])
                    worker_of += [k] * min(take, len(more))
            out = [{"src": address_text(r["src"]), "dst": address_text(r["dst"]), "proto": int(r["proto"]),
                    "sport": int(r["sport"]), "dport": int(r["dport"]),
                    "service": C.SERVICE_NAMES[min(int(r["service"]), 3)], "preference": int(r["preference"]),
                    "uplink": names[int(r["uplink"])] or None if int(r["uplink"]) < len(names) else None,
                    "packets": int(r["packets"]), "bytes": int(r["bytes"]),
                    **({"worker": worker_of[i]} if self.workers else {})} for i, r in enumerate(recs)]
            return {"ok": True, "total": total, "flows": out}
        if cmd == "config":
            from engine.control import config_document

            return {"ok": True, "policy": self.cfg.path, "mode": self.mode, "reloads": self.reloads,
                    "config": config_document(self.cfg)}
        if cmd == "uplink":
            names = [u.name for u in self.cfg.uplinks]
            name, mode = req["name"], req["mode"]
            if not name or name not in names:
                return {"ok": False, "error": f"no uplink named {name!r}; the uplinks are {', '.join(n for n in names if n)}"}
            try:
                now = self.conn.set_admin(name, mode)          # logs the change itself
            except ValueError as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "message": ADMIN_SAYS[mode].format(name=name, usable="usable" if now["usable"]
                                                                    else f"not usable ({now['reason']})"),
                    "uplink": now}
        if cmd == "reload":
            res = self.reload()
            self.log(f"reload: {res['message']}")
            return res
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    # ------------------------------------------------------------------ close
    def _close_all(self) -> None:
        for c in reversed(self.closables):
            try:
                c.close()
            except Exception:      # closing must go on; what failed is logged
                self.log.warning(f"closing {type(c).__name__} failed")
        self.closables = []

    def close(self) -> None:
        self._close_all()
        if self.punt_efd is not None:
            os.close(self.punt_efd)
            self.punt_efd = None
        self.inside.close(self)
        self.notify.close()
        self.log.close()
