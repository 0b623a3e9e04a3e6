"""An idle router sleeps: busy-polling follows forwarded traffic only.

After forwarded frames the loop keeps looking for busy_poll_ms (latency); what only passes
to the kernel (the uplinks' probe replies several times a second, ND, ARP) must not keep it
spinning, or an idle `mmr run` burns half a core for ever.  Measured from the process's own
CPU time (/proc/PID/stat), default policy (probes every 200 ms, busy_poll_ms = 1000), in the
draft testbed with the kernel's defaults.
"""
import os
import subprocess
import time

import pytest

from engine.testbed import CN_ADDR
from netlab import in_ns, make_testbed, running_router

pytestmark = pytest.mark.privileged

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system time of the whole process (every thread) so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cores_used(pid: int, seconds: float, during=None) -> float:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    if during is not None:
        during()
    else:
        time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


@pytest.fixture(scope="module")
def tb():
    with make_testbed("idle") as bed:
        yield bed


def test_idle_router_sleeps_and_spins_after_traffic(tb):
    with running_router(tb) as (p, _):
        ping = ["ping", "-6", "-n", "-q", "-i", "0.05", "-c", "60", "-W", "2", CN_ADDR]
        out = subprocess.run(in_ns(tb, "mn", *ping), capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr        # forwarded: the path works
        # busy: 20 forwarded pings a second keep the loop looking between them
        busy = cores_used(p.pid, 0, lambda: subprocess.run(in_ns(tb, "mn", *ping), capture_output=True, timeout=30))
        time.sleep(2.0)                  # busy_poll_ms (1 s) after the last forwarded frame
        idle = cores_used(p.pid, 4.0)    # probes keep answering meanwhile, 5 a second per uplink
        print(f"mmr run: {busy:.2f} cores while forwarding 20 pings/s, {idle:.3f} cores idle")
        assert busy > 0.2, busy          # the busy-poll is there (a wake-up per frame would be ~0)
        assert idle < 0.1, idle          # and ends: probe replies do not keep it going
