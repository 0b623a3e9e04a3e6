"""The load side of the live benchmarks: CN counts (and drops) the generator's UDP at
prerouting, and `bench/blaster.py` on MN sends it to the MMR's LAN port."""
import contextlib
import json
import os
import subprocess
import sys

from engine.netns import link_mac
from engine.testbed import CN_ADDR, MN_ADDR
from netlab import make_testbed

HERE = os.path.dirname(os.path.abspath(__file__))
CN_TABLE = """table inet bench {
 chain pre {
  type filter hook prerouting priority -300; policy accept;
  udp dport 9000 counter drop
 }
}
"""


@contextlib.contextmanager
def counting_testbed(prefix: str):
    """The draft testbed with CN counting the load (and dropping it before it costs CN anything)."""
    with make_testbed(prefix) as tb:
        subprocess.run(["ip", "netns", "exec", tb.ns("cn"), "nft", "-f", "-"], input=CN_TABLE, text=True,
                       check=True)
        yield tb


def cn_count(tb) -> int:
    out = tb.run("cn", "nft", "-j", "list", "table", "inet", "bench")
    for item in json.loads(out)["nftables"]:
        for e in item.get("rule", {}).get("expr", []):
            if "counter" in e:
                return int(e["counter"]["packets"])
    raise AssertionError("no counter on CN")


def blaster_argv(tb, seconds: float, pps: float, *more) -> list[str]:
    """bench/blaster.py on MN towards CN through the MMR's LAN port (`more`: flows, size, kind)."""
    mac = link_mac("lan0", tb.ns("mmr")).hex(":")
    return ["ip", "netns", "exec", tb.ns("mn"), sys.executable, os.path.join(HERE, "blaster.py"),
            "eth0", mac, MN_ADDR, CN_ADDR, str(seconds), str(pps), *map(str, more)]
