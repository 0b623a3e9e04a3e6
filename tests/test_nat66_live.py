"""NAPT66 live, in the ISP testbed (issue 11): the LAN's IPv6 (fd00:1::/64) leaves ISP1 with
up1's single address (nat6 = "masquerade"), which ISP1's BCP 38 filter lets through and CN
answers; nothing routes the LAN's prefix.  The kernel's default offloads stay on."""
import json
import subprocess
import time

import pytest

from engine.testbed import ISP, CN_ADDR
from netlab import in_ns, make_testbed, peer, running_mmr, start_peer

pytestmark = pytest.mark.privileged

UP1_ADDR6 = "2001:db8:a1::2"
POLICY = """[engine]
lan = "lan0"

[[uplink]]
name = "isp1"
device = "up1"
probe_targets = ["198.18.1.1"]
nat6 = "masquerade"
"""


@pytest.fixture(scope="module")
def bed():
    with make_testbed("n66", ISP) as tb:
        yield tb


def status(tb) -> dict:
    p = subprocess.run(in_ns(tb, "mmr", "python3", "-m", "engine", "status", "--json"), capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def running(tb, tmp_path):
    p = tmp_path / "napt66.toml"
    p.write_text(POLICY)
    return running_mmr(tb, "mmr", "run", "forwarding", "--config", str(p))


def test_ping_udp_and_tcp_leave_with_the_uplinks_address(bed, tmp_path):
    with running(bed, tmp_path) as (_, lines):
        assert f"translates IPv6 to {UP1_ADDR6} (NAPT66)" in "".join(lines)
        assert any(peer(bed, "mn", "reach", CN_ADDR, "1").returncode == 0 for _ in range(3))
        srv = start_peer(bed, "cn", "echo-server", 7601, 5, CN_ADDR)
        r = json.loads(peer(bed, "mn", "echo-client", CN_ADDR, 7601, 20).stdout)
        srv.kill()
        srv.wait()
        assert r["answered"] == 20, r
        srv = start_peer(bed, "cn", "tcp-serve", 7602, 2_000_000)
        got = peer(bed, "mn", "tcp-fetch", CN_ADDR, 7602, 2_000_000, timeout=60)
        srv.kill()
        srv.wait()
        assert json.loads(got.stdout) == {"bytes": 2_000_000, "ok": True}, got.stdout + got.stderr
        sink = start_peer(bed, "cn", "tcp-sink", 7603)
        sent = json.loads(peer(bed, "mn", "tcp-send", CN_ADDR, 7603, 2_000_000, timeout=60).stdout)
        sink.kill()
        sink.wait()
        assert sent["answer"] == sent["expect"], sent
        st = status(bed)["translation"]
        assert st["uplinks"]["isp1"]["address6"] == UP1_ADDR6 and st["napt66"]["mappings"] >= 2, st


def test_cn_sees_the_uplinks_address(bed, tmp_path):
    with running(bed, tmp_path):
        srv = subprocess.Popen(in_ns(bed, "cn", "python3", "-m", "engine.peers", "echo-server", 7611, 4, CN_ADDR),
                               stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)
        r = json.loads(peer(bed, "mn", "echo-client", CN_ADDR, 7611, 5).stdout)
        out, _ = srv.communicate(timeout=15)
        seen = json.loads(out.splitlines()[-1])
        assert r["answered"] == 5 and seen["answered"] == 5, (r, seen)
        assert set(seen["sources"]) == {UP1_ADDR6}, seen


def test_unsolicited_inbound_is_dropped_and_counted(bed, tmp_path):
    with running(bed, tmp_path):
        before = status(bed)["drops"]["nat_unsolicited"]
        code = ("import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM);\n"
                f"[s.sendto(b'x', ('{UP1_ADDR6}', p)) for p in (9999, 20000, 25000)]")  # mapping ports: outside the kernel's range
        subprocess.run(in_ns(bed, "cn", "python3", "-c", code), check=True, timeout=10)
        time.sleep(0.5)
        assert status(bed)["drops"]["nat_unsolicited"] >= before + 3
        rules = bed.run("mmr", "nft", "list", "table", "inet", "mmr")
        assert "@nat6" in rules


def test_time_exceeded_comes_back_through_the_translation(bed, tmp_path):
    """Hop limit 2: ISP1's time exceeded goes to up1's address, and mmr hands it to MN with
    the quote restored, so MN's socket sees it (IPV6_RECVERR)."""
    with running(bed, tmp_path):
        r6 = json.loads(peer(bed, "mn", "ttl-probe", CN_ADDR, 33436, 2).stdout)
        assert (r6["origin"], r6["type"]) == (3, 3), r6
