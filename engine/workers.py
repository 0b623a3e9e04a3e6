"""Several cores for ``mmr run``: PACKET_FANOUT workers.

    LAN device    --fanout group (CBPF: symmetric flow hash % N)--> ring k of worker k
    uplink device --fanout group (same program)------------------> ring k of worker k

``[engine] workers = N`` (default: the CPUs mmr may use, capped at the smallest RX queue
count of the LAN and uplink devices; 1 on a veth).  Worker 0 is the engine's own thread: its
Forwarder, Pipeline and rings are the ones ``workers = 1`` has, and it does the control work
(netlink, probes, control socket, timers, punts) between two ``Forwarder.run`` calls, as
before.  Workers 1..N-1 are threads of the same process, each with its own Forwarder,
Pipeline (so its own flowbase and selector), a ring per device and a TxSocket per device.
``Forwarder.run`` releases the GIL while it waits and while it forwards, so the workers run
in parallel.

Flow affinity.  Every device's rings join one fanout group, in worker order, so member k of
every group is worker k's socket (the kernel appends a joining socket at index num_members;
mmr never lets one leave while the others stay: a device that vanishes takes all its rings,
and when a device of that name is back, or appears for the first time, the engine thread
opens a ring per worker on it and makes a new group of them, in worker order, before any
worker reads from its ring).
The group runs ``fanout_program()``, a classic BPF program computing a hash over the source
and destination addresses and, where they are cheaply reachable (TCP or UDP right after the
IP header or after an IPv6 hop-by-hop header, not a fragment), the ports, symmetric in
source and destination (XOR), so both directions of a flow meet in the same worker.  The
kernel takes the program's return value modulo N.  ``flow_hash()`` is its reference in
Python (tests/test_workers.py checks that the kernel agrees).  PACKET_FANOUT_HASH is not
used: skb->hash of locally generated traffic is the sender socket's random txhash, which TCP
changes after a timeout, so a flow could move workers and be decided twice.  IPv4 fragments
are hashed without ports, as the parser keys them (engine._parse), so all fragments of a
datagram, and the flow they form in the flowbase, stay in one worker;
PACKET_FANOUT_FLAG_DEFRAG is not used because it would hand mmr the reassembled datagram,
larger than the MTU it forwards to.

Control reaches the workers without a lock on the hot path: what the engine thread changes
in its own Forwarder's tables (MACs, MTUs, gateways, LAN hosts, own addresses, prefixes,
the handover window) it announces by raising ``Datapath.gen``; each worker copies them into
its own Forwarder between two ``run`` calls.  Operations on a worker's flowbase or selector
(usable mask and measurements, rebinds after a failover, expiry, a reload, ``mmr flows``)
are queued to the worker, which runs them itself between two ``run`` calls; an eventfd in
every worker's poll set wakes it.  Punts go the other way: a queue to the engine thread,
which sends the ICMP errors and prompts the neighbour resolutions.
"""
from __future__ import annotations

import collections
import ctypes
import glob
import os
import select
import signal
import socket
import struct
import threading

import numpy as np

from engine import _kernel as K
from engine.errors import UserError

PACKET_FANOUT = 18
PACKET_FANOUT_DATA = 22
PACKET_FANOUT_CBPF = 6
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000
PACKET_FANOUT_FLAG_IGNORE_OUTGOING = 0x4000
MAX_WORKERS = 64
CALL_TIMEOUT_S = 2.0

# ---------------------------------------------------------------------- the default


def rx_queues(dev: str, sysfs: str = "/sys/class/net") -> int:
    """RX queues of a device (sysfs queues/rx-*); 1 when sysfs does not say."""
    n = len(glob.glob(os.path.join(sysfs, dev, "queues", "rx-*")))
    return max(n, 1)


def default_workers(devices: list[str], affinity: set | None = None, sysfs: str = "/sys/class/net") -> int:
    """The CPUs mmr may use, capped at the smallest RX queue count of its devices."""
    cpus = len(os.sched_getaffinity(0) if affinity is None else affinity)
    queues = min((rx_queues(d, sysfs) for d in devices), default=1)
    return max(1, min(cpus, queues, MAX_WORKERS))


# ---------------------------------------------------------------------- the hash
# classic BPF (linux/filter.h)
LD, LDX, ST, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x07
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, MSH = 0x00, 0x20, 0x40, 0x60, 0xA0
ADD, LSH, RSH, AND, XOR = 0x00, 0x60, 0x70, 0x50, 0xA0
JA, JEQ, JSET = 0x00, 0x10, 0x40
K_, X_ = 0x00, 0x08
RET_A = 0x10
TAX = 0x00
SKF_AD_PROTOCOL = 0xFFFFF000      # SKF_AD_OFF + SKF_AD_PROTOCOL: ntohs(skb->protocol)


def fanout_program() -> list[tuple[int, int, int, int]]:
    """The fanout program as (code, jt, jf, k).  It sees the packet from its network header
    on (the kernel runs it before it pushes the link-layer header back); a load past the end
    ends it with 0 (worker 0)."""
    prog: list = []
    labels: dict[str, int] = {}
    fix: list = []

    def op(code, k=0):
        prog.append([code, 0, 0, k & 0xFFFFFFFF])

    def jmp(code, k, jt, jf):          # jt/jf: labels, or None for the next instruction
        fix.append((len(prog), jt, jf))
        prog.append([code, 0, 0, k & 0xFFFFFFFF])

    def label(name):
        labels[name] = len(prog)

    op(LD | W | ABS, SKF_AD_PROTOCOL)
    jmp(JMP | JEQ | K_, 0x86DD, "v6", None)
    jmp(JMP | JEQ | K_, 0x0800, "v4", "zero")
    label("v4")
    op(LD | W | ABS, 12)
    op(MISC | TAX)
    op(LD | W | ABS, 16)
    op(ALU | XOR | X_)
    op(ST, 0)                                   # M0 = saddr ^ daddr
    op(LD | H | ABS, 6)
    jmp(JMP | JSET | K_, 0x3FFF, "fold", None)  # a fragment: no ports (as the parser keys it)
    op(LD | B | ABS, 9)
    jmp(JMP | JEQ | K_, 6, "ports4", None)
    jmp(JMP | JEQ | K_, 17, "ports4", "fold")
    label("ports4")
    op(LDX | B | MSH, 0)                        # X = 4 * IHL
    jmp(JMP | JA, 0, None, None)
    fix[-1] = (fix[-1][0], "ports", "ports")
    label("v6")
    op(LD | W | ABS, 8)
    for off in range(12, 40, 4):
        op(MISC | TAX)
        op(LD | W | ABS, off)
        op(ALU | XOR | X_)
    op(ST, 0)                                   # M0 = xor of the 8 address words
    op(LD | B | ABS, 6)
    jmp(JMP | JEQ | K_, 6, "l4at40", None)
    jmp(JMP | JEQ | K_, 17, "l4at40", None)
    jmp(JMP | JEQ | K_, 0, "hbh", "fold")
    label("l4at40")
    op(LDX | W | IMM, 40)
    jmp(JMP | JA, 0, "ports", "ports")
    label("hbh")
    op(LD | B | ABS, 40)                        # the hop-by-hop header's next header
    jmp(JMP | JEQ | K_, 6, "hbhlen", None)
    jmp(JMP | JEQ | K_, 17, "hbhlen", "fold")
    label("hbhlen")
    op(LD | B | ABS, 41)
    op(ALU | ADD | K_, 1)
    op(ALU | LSH | K_, 3)
    op(ALU | ADD | K_, 40)
    op(MISC | TAX)
    label("ports")
    op(LD | W | IND, 0)                         # sport << 16 | dport
    op(ST, 1)
    op(ALU | RSH | K_, 16)
    op(MISC | TAX)
    op(LD | MEM, 1)
    op(ALU | XOR | X_)
    op(ALU | AND | K_, 0xFFFF)                  # sport ^ dport
    op(MISC | TAX)
    op(LD | MEM, 0)
    op(ALU | XOR | X_)
    jmp(JMP | JA, 0, "mix", "mix")
    label("fold")
    op(LD | MEM, 0)
    label("mix")
    op(ST, 2)
    op(ALU | RSH | K_, 16)
    op(MISC | TAX)
    op(LD | MEM, 2)
    op(ALU | XOR | X_)
    op(ST, 2)
    op(ALU | RSH | K_, 8)
    op(MISC | TAX)
    op(LD | MEM, 2)
    op(ALU | XOR | X_)
    op(RET | RET_A)
    label("zero")
    op(RET | K_, 0)
    for at, jt, jf in fix:
        code = prog[at][0]
        if code == JMP | JA:
            prog[at][3] = labels[jt] - at - 1
            continue
        prog[at][1] = 0 if jt is None else labels[jt] - at - 1
        prog[at][2] = 0 if jf is None else labels[jf] - at - 1
        assert 0 <= prog[at][1] < 256 and 0 <= prog[at][2] < 256
    return [tuple(i) for i in prog]


def flow_hash(l3: bytes, ethertype: int) -> int:
    """The fanout program's value for an IP packet (from its network header), in Python:
    the worker is flow_hash(...) % N."""
    def word(off):
        if off + 4 > len(l3):
            raise IndexError
        return int.from_bytes(l3[off:off + 4], "big")

    try:
        ports = None
        if ethertype == 0x0800:
            a = word(12) ^ word(16)
            if len(l3) < 10:
                raise IndexError
            if not int.from_bytes(l3[6:8], "big") & 0x3FFF and l3[9] in (6, 17):
                ports = 4 * (l3[0] & 0xF)
        elif ethertype == 0x86DD:
            a = 0
            for off in range(8, 40, 4):
                a ^= word(off)
            if len(l3) < 7:
                raise IndexError
            if l3[6] in (6, 17):
                ports = 40
            elif l3[6] == 0:
                if len(l3) < 42:
                    raise IndexError
                if l3[40] in (6, 17):
                    ports = 40 + (l3[41] + 1) * 8
        else:
            return 0
        if ports is not None:
            p = word(ports)
            a ^= ((p >> 16) ^ p) & 0xFFFF
    except IndexError:
        return 0
    a ^= a >> 16
    a ^= a >> 8
    return a


def _setsockopt_fprog(sock, prog) -> None:
    raw = b"".join(struct.pack("HBBI", *i) for i in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HxxxxxxQ", len(prog), ctypes.addressof(buf))
    sock.setsockopt(K.SOL_PACKET, PACKET_FANOUT_DATA, fprog)


def join_fanout(socks: list, dev: str) -> int:
    """Put the packet sockets of one device into one new fanout group, in this order (member
    k = socks[k]), running fanout_program(); returns the group id."""
    flags = PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_IGNORE_OUTGOING
    try:
        socks[0].setsockopt(K.SOL_PACKET, PACKET_FANOUT, (flags | PACKET_FANOUT_FLAG_UNIQUEID) << 16)
        gid = struct.unpack("I", socks[0].getsockopt(K.SOL_PACKET, PACKET_FANOUT, 4))[0] & 0xFFFF
        _setsockopt_fprog(socks[0], fanout_program())
        for s in socks[1:]:
            s.setsockopt(K.SOL_PACKET, PACKET_FANOUT, gid | (flags << 16))
    except OSError as exc:
        raise UserError(f"cannot spread {dev} over {len(socks)} workers (PACKET_FANOUT: {exc.strerror}); "
                        f"set workers = 1 in [engine] (this needs Linux >= 6.2 for "
                        f"PACKET_FANOUT_FLAG_IGNORE_OUTGOING)") from None
    return gid


# ---------------------------------------------------------------------- a worker


class _Call:
    __slots__ = ("fn", "done", "result", "error")

    def __init__(self, fn, wait: bool):
        self.fn = fn
        self.done = threading.Event() if wait else None
        self.result = self.error = None


class Worker:
    """Worker k >= 1: its own Forwarder, Pipeline, rings and sockets, in its own thread."""

    def __init__(self, k: int, dp, batch: int):
        from engine import _forward
        from engine._pipeline import Pipeline

        self.k, self.dp = k, dp
        cfg = dp.cfg
        self.pipe = Pipeline(cfg, batch=batch)
        self.fw = _forward.Forwarder(self.pipe, True, dp.n_up, batch)
        self.fw.param_problems = False
        self.rings: list = []
        self.in_tx = None
        self.up_tx: list = []
        self.efd = -1
        self.in_ring = None
        try:
            if dp.inside.ring is not None:          # an absent LAN device: opened when it appears
                self.in_ring, self.in_tx = self.open_inside()
                self.rings.append(self.in_ring)
            self.up_rx = [None] * dp.n_up
            self.up_tx = [None] * dp.n_up
            for k in range(dp.n_up):
                if dp.up_rx[k] is not None:         # an absent device: opened when it appears
                    self.up_rx[k], self.up_tx[k] = self.open_uplink(k)
                    self.rings.append(self.up_rx[k])
            self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except BaseException:
            self.close()
            raise
        self.fw.attach(in_ring=self.in_ring, in_tx=self.in_tx, up_rx=self.up_rx, up_tx=self.up_tx)
        self.calls: collections.deque = collections.deque()
        self.gen = -1
        self.nflows = 0
        self.thread = None
        self.failed = None
        self._pfd()

    def open_inside(self) -> tuple:
        """(ring, socket) for this worker on the LAN device as it is now; opened by the engine
        thread (before the fanout group is made), attached by attach_inside()."""
        from engine._ring import RxRing, TxSocket

        dp, lan = self.dp, self.dp.inside.dev
        rx = RxRing(lan, frames=dp.cfg.ring_frames, mtu=dp.state.link(lan).mtu, capacity=dp.batch)
        try:
            tx = TxSocket(lan)
        except BaseException:
            rx.close()
            raise
        return rx, tx

    def attach_inside(self, rx, tx) -> None:
        """(in the worker's thread) the LAN device is back: forward with these."""
        self.in_ring, self.in_tx = rx, tx
        self.rings.append(rx)
        self.fw.attach(in_ring=rx, in_tx=tx)
        self._pfd()

    def open_uplink(self, u: int) -> tuple:
        """(ring, socket) for this worker on uplink u's device as it is now; opened by the
        engine thread (before the fanout group is made), attached by attach_uplink()."""
        from engine._ring import ARPHRD_ETHER, RxRing, TxSocket, link_type

        dp, up = self.dp, self.dp.cfg.uplinks[u]
        rx = RxRing(up.device, frames=dp.cfg.ring_frames, mtu=dp.state.link(up.device).mtu,
                    capacity=dp.batch)
        try:
            tx = TxSocket(up.device, qdisc_bypass=dp.inside.tx_qdisc_bypass(dp, up) and
                          link_type(up.device) == ARPHRD_ETHER)
        except BaseException:
            rx.close()
            raise
        return rx, tx

    def attach_uplink(self, u: int, rx, tx) -> None:
        """(in the worker's thread) uplink u's device is back: forward with these."""
        self.up_rx[u], self.up_tx[u] = rx, tx
        self.rings.append(rx)
        self.fw.attach(up_rx=self.up_rx, up_tx=self.up_tx)
        self._pfd()

    def _pfd(self) -> None:
        from engine.datapath import Poller

        srcs = [r.fileno() for r in [self.in_ring] + self.up_rx if r is not None]
        pfd = np.zeros(1 + len(srcs), Poller.PFD)
        pfd["fd"] = [self.efd] + srcs
        pfd["events"] = select.POLLIN
        self.pfd = pfd

    # -- from the engine thread
    def wake(self) -> None:
        try:
            os.eventfd_write(self.efd, 1)
        except OSError:
            pass

    def post(self, fn, wait: bool = False) -> _Call:
        c = _Call(fn, wait)
        self.calls.append(c)
        self.wake()
        return c

    def start(self) -> None:
        self.thread = threading.Thread(target=self._main, name=f"mmr-worker-{self.k}", daemon=True)
        self.thread.start()

    def join(self, timeout: float = CALL_TIMEOUT_S) -> None:
        if self.thread is not None:
            self.wake()
            self.thread.join(timeout)

    # -- in the worker's thread
    def _main(self) -> None:
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        except (OSError, ValueError):
            pass
        dp, fw = self.dp, self.fw
        try:
            while not dp.workers_stop:
                if self.gen != dp.gen:
                    self.sync()
                while self.calls:
                    c = self.calls.popleft()
                    try:
                        c.result = c.fn(self)
                    except Exception as exc:       # reported by the caller (or logged below)
                        c.error = exc
                        if c.done is None:
                            dp.worker_error(self, exc)
                    if c.done is not None:
                        c.done.set()
                fw.run(self.pfd, 1, 100000.0, dp.spin_s * 1e6)
                if fw.punt_n:
                    dp.worker_punts(fw.take_punts())
                rev = self.pfd["revents"]
                if rev[0]:
                    try:
                        os.eventfd_read(self.efd)
                    except OSError:
                        pass
                if rev[1:].any():
                    self._source_errors()
                rev[:] = 0
                self.nflows = len(self.pipe.flows)
        except Exception as exc:
            self.failed = exc
            dp.worker_error(self, exc, fatal=True)
        finally:
            while self.calls:                      # nobody waits for ever on a stopped worker
                c = self.calls.popleft()
                if c.done is not None:
                    c.error = RuntimeError(f"worker {self.k} stopped")
                    c.done.set()

    def _source_errors(self) -> None:
        for i in np.flatnonzero(self.pfd["revents"][1:]):
            fd = int(self.pfd["fd"][1 + i])
            for r in self.rings:
                if r is not None and r.fileno() == fd:
                    try:
                        r.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    except OSError:
                        pass

    def sync(self) -> None:
        """Copy the engine thread's tables into this worker's Forwarder."""
        self.gen = self.dp.gen
        f0, f = self.dp.fw, self.fw
        f.up_mac[:] = f0.up_mac
        f.gw_mac[:] = f0.gw_mac
        f.up_mtu[:] = f0.up_mtu
        f.in_mac[:] = f0.in_mac
        f.in_mtu = f0.in_mtu
        f.host_mac[:] = f0.host_mac
        f.up_strip[:] = f0.up_strip
        f.set_lan_prefixes([(bytes(v), bytes(m)) for v, m in f0.lan_net[:f0.n_lan]])
        f.set_kernel_prefixes([(bytes(v), bytes(m)) for v, m in f0.kernel_net[:f0.n_kernel]])
        for mine, theirs in ((f.hosts, f0.hosts), (f.local, f0.local)):
            want = dict(theirs.items())
            if dict(mine.items()) != want:
                mine.clear()
                for key, v in want.items():
                    mine.set(key, v)
        f.t_start, f.t_end = f0.t_start, f0.t_end
        if f.nat is not f0.nat or f.npt is not f0.npt or f.nat6 is not f0.nat6 or (f.nat_mode != f0.nat_mode).any():
            f.set_nat(f0.nat, list(f0.nat_mode), f0.npt, f0.nat6)      # one translator, shared (it locks)
        if f.edge is not f0.edge or (f.edge_mode != f0.edge_mode).any():
            f.set_edge(f0.edge, list(f0.edge_mode))          # one edge table, shared (it locks)
        f.set_routed_prefixes([(bytes(v), bytes(m)) for v, m in f0.open_net[:f0.n_open]])
        f.set_forwards([(bytes(f0.fwd_addr[k]), *map(int, f0.fwd_meta[k]), [u for u in range(f0.n_up) if f0.fwd_up[k, u]])
                        for k in range(f0.n_fwd)])

    def detach_inside(self) -> None:
        """(in the worker's thread) the LAN device is gone: stop using it, close its ring and
        socket."""
        self.fw.attach(in_ring=None, in_tx=None)
        if self.in_ring is not None:
            self.rings.remove(self.in_ring)
            self.in_ring.close()
        if self.in_tx is not None:
            self.in_tx.close()
        self.in_ring = self.in_tx = None
        self._pfd()

    def detach_uplink(self, u: int) -> tuple[int, int]:
        """Uplink u's device is gone: stop using it, close its ring and socket; returns what
        was sent on it."""
        self.fw.detach_uplink(u)
        sent = (0, 0)
        if self.up_tx[u] is not None:
            sent = (int(self.up_tx[u].sent), int(self.up_tx[u].bytes))
            self.up_tx[u].close()
        if self.up_rx[u] is not None:
            self.rings.remove(self.up_rx[u])
            self.up_rx[u].close()
        self.up_rx[u] = self.up_tx[u] = None
        self._pfd()
        return sent

    def close(self) -> None:
        for r in self.rings + [self.in_tx] + self.up_tx:
            if r is not None:
                try:
                    r.close()
                except Exception:
                    pass
        self.rings = []
        if self.efd >= 0:
            os.close(self.efd)
            self.efd = -1


class SelectorFan:
    """What the connection manager sees as the selector: the engine thread's, with every
    change queued to the other workers too."""

    def __init__(self, dp):
        self.dp = dp

    def update(self, chars, usable, metrics) -> None:
        self.dp.pipe.selector.update(chars, usable, metrics)
        c, u, m = np.array(chars), np.array(usable), np.array(metrics)
        for w in self.dp.workers:
            w.post(lambda w, c=c, u=u, m=m: w.pipe.selector.update(c, u, m))

    def __getattr__(self, name):
        return getattr(self.dp.pipe.selector, name)


class FlowsFan:
    """What the connection manager sees as the flowbase: every worker's."""

    def __init__(self, dp):
        self.dp = dp

    def rebind(self, uplink_from, uplink_to):
        to = uplink_to if isinstance(uplink_to, (int, np.integer)) else np.array(uplink_to)
        moved = int(self.dp.pipe.flows.rebind(uplink_from, to))
        for r in self.dp.on_workers(lambda w: w.pipe.flows.rebind(uplink_from, to)):
            moved += int(r or 0)
        return moved

    def uplink_counts(self, n: int):
        total = np.array(self.dp.pipe.flows.uplink_counts(n), np.int64)
        for r in self.dp.on_workers(lambda w: np.array(w.pipe.flows.uplink_counts(n), np.int64)):
            if r is not None:
                total += r
        return total

    def __len__(self) -> int:
        return len(self.dp.pipe.flows) + sum(w.nflows for w in self.dp.workers)

    def __getattr__(self, name):
        return getattr(self.dp.pipe.flows, name)
