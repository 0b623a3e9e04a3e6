"""Host mode: TCP through the virtual interface (mmr host) vs the same transfer over a
physical interface directly, same testbed, same run (iperf3 host -> peer, offloads at the
kernel's defaults everywhere unless said).

vi0 carries a virtio-net header and offers the stack checksum and segmentation offloads
(pyx/tun.pyx), so the stack hands it 64 KiB super-frames, as it hands the interface; mmr
sends them whole for the kernel to segment.  Rows:

* as shipped: vi0 vs the interface with its offloads (TSO, GSO): the gate;
* like for like without segmentation offload: vi0 as a plain TUN (MMR_TUN_OFFLOADS=0, what
  a kernel refusing the header gets) vs the interface with TSO and GSO off: the fallback,
  gated as before.

Direct and vi0 alternate twice and the best of each counts (a neighbour's burst on this
shared 2-core machine then hurts both columns alike).  iperf3's sender, its receiver and
mmr share the 2 cores: in the direct case the sender's core also carries the transfer
through R2 and the peer's receive (veth runs them in the sender's system call); through
vi0, mmr's does, after two more copies of every byte (TUN read, packet-socket send)."""
import os
import subprocess
import sys
import time

import pytest

from engine.testbed import HOST, PEER_ADDR, Testbed
from netlab import ROOT, in_ns, iperf
from ratio import RESULTS, Figure

pytestmark = pytest.mark.privileged
SECONDS = 3
ROUNDS = 2
# measured 0.49-0.99x as shipped (median 0.60x) while other test runs shared the machine,
# about 0.9-1.0x when it was quiet (target 0.7x); gated at half the target so a noisy shared
# 2-core run passes and the plain TUN (0.08-0.11x) fails
GATE_AS_SHIPPED = 0.35
GATE_LIKE_FOR_LIKE = 0.15      # the plain TUN vs the interface without TSO/GSO: measured 0.20-0.52x


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


class HostMode:
    """``mmr host`` in the testbed's host namespace (env: extra environment)."""

    def __init__(self, tb, **env):
        self.p = subprocess.Popen(in_ns(tb, "host", sys.executable, "-m", "engine", "host", "--stats-interval", "0"),
                                  cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
        self.ready = ""
        while "vi0 up" not in self.ready:        # (a warning may come first)
            line = self.p.stderr.readline()
            assert line, "mmr host ended before it was ready"
            self.ready = line

    def close(self):
        self.p.terminate()
        self.p.wait(timeout=10)


def timed(tb, pid=None):
    """iperf3 host -> peer: (bits/s, CPU cores mmr used meanwhile)."""
    c0, t0 = (cpu_seconds(pid), time.monotonic()) if pid else (0, 0)
    bps = iperf(tb, "host", "peer", PEER_ADDR, SECONDS)
    return bps, ((cpu_seconds(pid) - c0) / (time.monotonic() - t0 - 0.5) if pid else 0.0)


def test_tcp_through_vi0_vs_direct():
    tb = Testbed(f"k{os.getpid() % 10000}-", HOST)
    tb.down()
    try:
        tb.up()
        # the direct route over i2, the interface mmr picks for untagged TCP; vi0's route
        # (metric 10) wins over it while mmr runs
        tb.run("host", "ip", "-6", "route", "add", "2001:db8:ee::/48", "via", "2001:db8:b2::1", "metric", "500")
        direct, vi, cores = [], [], []
        for _ in range(ROUNDS):
            direct.append(iperf(tb, "host", "peer", PEER_ADDR, SECONDS))
            mmr = HostMode(tb)
            try:
                offloads = mmr.ready.split("offloads ", 1)[1].split(")")[0]     # those the kernel took
                bps, c = timed(tb, mmr.p.pid)
                vi.append(bps)
                cores.append(c)
            finally:
                mmr.close()
        tb.run("host", "ethtool", "-K", "i2", "tso", "off", "gso", "off")
        direct_noseg = iperf(tb, "host", "peer", PEER_ADDR, SECONDS)
        tb.run("host", "ethtool", "-K", "i2", "tso", "on", "gso", "on")
        mmr = HostMode(tb, MMR_TUN_OFFLOADS="0")
        try:
            assert "offloads none" in mmr.ready, mmr.ready
            vi_plain = iperf(tb, "host", "peer", PEER_ADDR, SECONDS)
        finally:
            mmr.close()
    finally:
        tb.down()
    d, v = max(direct), max(vi)
    as_shipped, like = v / d, vi_plain / direct_noseg
    RESULTS.append(Figure("host mode TCP host -> peer",
                          f"direct over i2 (offloads on) {d / 1e6:,.0f} Mbit/s, through vi0 ({offloads}) "
                          f"{v / 1e6:,.0f} Mbit/s, mmr {max(cores):.2f} cores: {as_shipped:.2f}x as shipped; "
                          f"direct without segmentation offload {direct_noseg / 1e6:,.0f} Mbit/s, vi0 as a plain TUN "
                          f"{vi_plain / 1e6:,.0f} Mbit/s: {like:.2f}x like for like; "
                          f"(rounds: direct {', '.join(f'{x / 1e6:,.0f}' for x in direct)}, "
                          f"vi0 {', '.join(f'{x / 1e6:,.0f}' for x in vi)})"))
    assert as_shipped >= GATE_AS_SHIPPED, (direct, vi)
    assert like >= GATE_LIKE_FOR_LIKE, (direct_noseg, vi_plain)
