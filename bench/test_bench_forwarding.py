"""The live router against the kernel's own forwarding, in the same testbed and the same run.

    MN (blaster / iperf3 client) -- MMR (kernel forwarding | mmr run) -- AR2 -- CN (counter / iperf3 -s)

Small packets: 64-byte UDP/IPv6 frames from the project's AF_PACKET generator on MN; CN
counts what arrives with an nftables counter (and drops it there, so CN's stack is not the
bottleneck).  Delivered packets per second and loss, first at the generator's full speed,
then at 80 % of the kernel's delivered rate; at full speed also mmr with two workers
(``--workers 2``: PACKET_FANOUT over the 16 flows).  TCP: iperf3 MN -> CN, kernel vs mmr
(one worker, then two: one flow stays in one worker).

On veth the kernel's forwarding runs in the generator's own softirq context, so under the
kernel the generator's CPU also pays for forwarding, while mmr forwards on the other core:
the figures are "delivered for the same generator", which is what a LAN host would see.

Every testbed link keeps the kernel's default offloads (TX checksum, TSO, GSO on), in both
columns: the TCP sender hands its link 64 KiB super-frames, which the kernel forwards as they
are and mmr passes on whole for the kernel to segment (PACKET_VNET_HDR).
"""
import json
import os
import subprocess
import time

import pytest

from engine.testbed import CN_ADDR
from load import blaster_argv, cn_count, counting_testbed
from netlab import iperf, running_router
from ratio import RESULTS, Figure

pytestmark = pytest.mark.privileged

SECONDS = float(os.environ.get("MMR_BENCH_FWD_SECONDS", "2"))

# Gates (ratios, margins a noisy shared 2-core machine still meets; the targets are 1.0x
# for small packets and 0.5x for TCP, recorded in bench/README.md)
GATE_SMALL = 0.5          # half the target
GATE_TCP = 0.25           # half the target
GATE_LOSS_AT_LOAD = 0.05  # target 0; a descheduled moment on a shared machine costs some
# workers = 2 against workers = 1, same run: on this 2-core machine the generator, the
# softirqs and both workers share two cores, so no scaling is gated, only that a second
# worker does not cost more than a noisy margin (bench/README.md)
GATE_TWO_WORKERS = 0.6




@pytest.fixture(scope="module")
def bed():
    with counting_testbed("b") as tb:
        yield tb


def blast(tb, seconds: float, pps: float = 0) -> dict:
    before = cn_count(tb)
    p = subprocess.run(blaster_argv(tb, seconds, pps),
                       capture_output=True, text=True, timeout=seconds + 30)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    time.sleep(0.3)                                   # let the queues drain
    res["delivered"] = cn_count(tb) - before
    res["pps"] = res["delivered"] / res["seconds"]
    res["offered_pps"] = res["offered"] / res["seconds"]
    res["loss"] = 1 - res["delivered"] / max(1, res["offered"])
    return res


def under_mmr(tb, measure, workers: int = 1):
    """measure() under mmr run with this many workers (after a warm-up that resolves
    neighbours and creates the flows)."""
    with running_router(tb, "--workers", str(workers)):
        blast(tb, 0.2, 1000)
        return measure()


def both(tb, measure):
    """measure() under the kernel's forwarding, then under mmr run (one worker)."""
    kernel = measure()
    return kernel, under_mmr(tb, measure)


def fmt(r):
    return (f"offered {r['offered_pps']:,.0f} pps, delivered {r['pps']:,.0f} pps, "
            f"loss {100 * r['loss']:.2f} %")


def test_small_packets_kernel_vs_mmr(bed):
    assert " 0% packet loss" in bed.run("mn", "ping", "-6", "-c", "2", "-i", "0.2", CN_ADDR)
    kernel, mmr = both(bed, lambda: blast(bed, SECONDS))
    ratio = mmr["pps"] / kernel["pps"]
    RESULTS.append(Figure("64-byte UDP/IPv6, generator at full speed",
                          f"kernel {fmt(kernel)}; mmr {fmt(mmr)}; mmr/kernel {ratio:.2f}x"))
    mmr2 = under_mmr(bed, lambda: blast(bed, SECONDS), workers=2)
    ratio2, scaling = mmr2["pps"] / kernel["pps"], mmr2["pps"] / max(1.0, mmr["pps"])
    RESULTS.append(Figure("64-byte UDP/IPv6, full speed, mmr workers = 2",
                          f"mmr {fmt(mmr2)}; mmr/kernel {ratio2:.2f}x; workers 2 / workers 1 {scaling:.2f}x"))
    # at 80 % of the kernel's delivered rate
    load = 0.8 * kernel["pps"]
    k80, m80 = both(bed, lambda: blast(bed, SECONDS, load))
    RESULTS.append(Figure(f"64-byte UDP/IPv6 at 80 % of the kernel's rate ({load:,.0f} pps)",
                          f"kernel {fmt(k80)}; mmr {fmt(m80)}"))
    assert kernel["delivered"] > 0 and mmr["delivered"] > 0
    assert ratio >= GATE_SMALL, (kernel, mmr)
    assert mmr2["delivered"] > 0 and scaling >= GATE_TWO_WORKERS, (mmr, mmr2)
    assert m80["loss"] <= GATE_LOSS_AT_LOAD, m80
    RESULTS.append(Figure("loss at 80 % load", f"kernel {100 * k80['loss']:.2f} %, mmr {100 * m80['loss']:.2f} %"))


def test_tcp_kernel_vs_mmr(bed):
    kernel, mmr = both(bed, lambda: iperf(bed, "mn", "cn", CN_ADDR, SECONDS + 1))
    ratio = mmr / kernel
    RESULTS.append(Figure("TCP iperf3 MN -> CN", f"kernel {kernel / 1e6:,.0f} Mbit/s, mmr {mmr / 1e6:,.0f} "
                                                 f"Mbit/s, mmr/kernel {ratio:.2f}x"))
    mmr2 = under_mmr(bed, lambda: iperf(bed, "mn", "cn", CN_ADDR, SECONDS + 1), workers=2)
    RESULTS.append(Figure("TCP iperf3 MN -> CN, mmr workers = 2 (one flow: one worker)",
                          f"mmr {mmr2 / 1e6:,.0f} Mbit/s, mmr/kernel {mmr2 / kernel:.2f}x"))
    assert ratio >= GATE_TCP, (kernel, mmr)
