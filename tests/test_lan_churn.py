"""The LAN device comes and goes (issue 11), live in the ISP testbed: the veth pair between
MN and the MMR deleted and made again under its names, with its addresses on both ends and
MN's routes (a re-plugged device: new ifindex, new MAC, empty neighbour tables), while
``mmr run`` goes on; and ``mmr run`` started before the LAN device exists.  The uplinks,
their flows and the translation stay; traffic MN <-> CN resumes without a restart, with one
worker and with two (a fanout group made again).  The kernel's default offloads stay on."""
import json
import subprocess
import time

import pytest

from engine.testbed import CN_ADDR, ISP, ISP_CN_ADDR4
from netlab import exists, flow_uplinks, in_ns, make_testbed, peer, running_mmr, start_peer, until
from test_idle import cores_used
from test_nat_live import UPLINKS, reaches, status

pytestmark = pytest.mark.privileged

CN4 = "::ffff:" + ISP_CN_ADDR4


@pytest.fixture(scope="module")
def bed():
    with make_testbed("lanc", ISP) as tb:
        yield tb


def policy(tmp_path, workers):
    p = tmp_path / "lan.toml"
    p.write_text(f'[engine]\nlan = "lan0"\nworkers = {workers}\n' + UPLINKS["isp1"] + UPLINKS["isp2"])
    return str(p)


def lan_index(tb):
    return status(tb)["lan"]["ifindex"]


def lan_prefixes(tb) -> list:
    p = subprocess.run(in_ns(tb, "mmr", "python3", "-m", "engine", "status", "--config", "--json"),
                       capture_output=True, text=True, timeout=30)
    return json.loads(p.stdout)["config"]["engine"]["lan_prefixes"]


LEARNED = ["fd00:1::/64", "192.168.1.0/24"]         # lan0's networks (no lan_prefixes in the policy)


def flows_to(tb, dport) -> list:
    return flow_uplinks(tb, "mmr", dport)


def restore(tb):
    """The testbed as built, whatever the test left: the LAN pair back with its addresses."""
    if not exists(tb, "mmr", "lan0"):
        tb.relink("mmr", "lan0")


def traffic_both_ways(tb, port):
    """MN reaches CN (IPv4 through NAPT44, IPv6 through NPTv6) and a TCP transfer goes each
    way on a connection MN opened, every byte checked."""
    assert reaches(tb, "mn", ISP_CN_ADDR4, tries=5)
    assert reaches(tb, "mn", CN_ADDR, tries=5)
    for k, dst in enumerate((CN4, CN_ADDR)):
        sink = start_peer(tb, "cn", "tcp-sink", port + 2 * k)
        try:
            r = peer(tb, "mn", "tcp-send", dst, port + 2 * k, 1_000_000, timeout=60)
        finally:
            sink.kill()
            sink.wait()
        out = json.loads(r.stdout)
        assert out["answer"] == out["expect"], out
        srv = start_peer(tb, "cn", "tcp-serve", port + 2 * k + 1, 1_000_000)
        try:
            r = peer(tb, "mn", "tcp-fetch", dst, port + 2 * k + 1, 1_000_000, timeout=60)
        finally:
            srv.kill()
            srv.wait()
        assert json.loads(r.stdout) == {"bytes": 1_000_000, "ok": True}, r.stdout + r.stderr


def per_worker(tb) -> list:
    return [w["rx_inside"] for w in status(tb)["workers"]]


def every_worker_reads_the_lan(tb, before):
    """Each worker's LAN ring carries frames (so it is in the device's fanout group): new UDP
    flows from MN, each hashed to a worker by its ports, until every worker read more than
    before (two workers: a flow misses one with odds 1/2)."""
    srv = start_peer(tb, "cn", "echo-server", 7790, 30, CN4)
    try:
        for k in range(16):
            now = per_worker(tb)
            if all(a > b for a, b in zip(now, before)):
                return
            r = json.loads(peer(tb, "mn", "echo-client", CN4, 7790, 2).stdout)
            assert r["answered"] == 2, r
        assert False, f"a worker reads nothing from the LAN: {before} -> {per_worker(tb)}"
    finally:
        srv.kill()
        srv.wait()


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_a_recreated_lan_device_is_taken_into_use_again(bed, tmp_path, workers):
    """lan0 deleted while mmr runs: one line says so, the uplinks and the flows stay, the
    counter says so, mmr does not spin; lan0 made again (MN's end too): mmr opens the new
    device (its index in mmr status), and MN <-> CN works again both ways."""
    try:
        with running_mmr(bed, "mmr", "run", "forwarding", "--config", policy(tmp_path, workers)) as (p, lines):
            before = lan_index(bed)
            assert before is not None
            traffic_both_ways(bed, 7700)
            srv = start_peer(bed, "cn", "echo-server", 7710, 60, CN4)
            try:
                r = json.loads(peer(bed, "mn", "echo-client", CN4, 7710, 5).stdout)
                assert r["answered"] == 5, r
                assert flows_to(bed, 7710) == ["isp1"]
                seen = per_worker(bed)

                bed.run("mmr", "ip", "link", "del", "lan0")          # MN's end goes with it
                until("mmr sees lan0 gone", lambda: lan_index(bed) is None)
                st = status(bed)
                assert st["counters"]["lan_gone"] == 1, st["counters"]
                assert all(u["usable"] for u in st["uplinks"]), st["uplinks"]
                assert flows_to(bed, 7710) == ["isp1"]                # the flow stays, on its uplink
                assert len(st["workers"]) == workers
                text = subprocess.run(in_ns(bed, "mmr", "python3", "-m", "engine", "status"),
                                      capture_output=True, text=True, timeout=30).stdout
                assert "LAN: lan0 (absent" in text, text
                assert lan_prefixes(bed) == LEARNED                  # kept while it is absent
                # an absent LAN leaves mmr idle: no ring to look at, no busy-poll (test_idle.py)
                time.sleep(1.5)                                      # busy_poll_ms after the last frame
                idle = cores_used(p.pid, 3.0)
                print(f"mmr run ({workers} workers) with its LAN device absent: {idle:.3f} cores")
                assert idle < 0.1, idle

                bed.relink("mmr", "lan0")                            # both ends, addresses, MN's routes
                after = until("mmr takes the new lan0", lambda: lan_index(bed))
                assert after != before
                until("the prefixes learned again", lambda: lan_prefixes(bed) == LEARNED)
                # the new device's addresses are followed (its index, not the old one's)
                bed.run("mmr", "ip", "addr", "add", "192.168.9.1/24", "dev", "lan0")
                until("a new address's network learned", lambda: "192.168.9.0/24" in lan_prefixes(bed))
                bed.run("mmr", "ip", "addr", "del", "192.168.9.1/24", "dev", "lan0")
                until("its network gone again", lambda: lan_prefixes(bed) == LEARNED)
                traffic_both_ways(bed, 7720)
                r = json.loads(peer(bed, "mn", "echo-client", CN4, 7710, 5).stdout)
                assert r["answered"] == 5, r
                assert set(flows_to(bed, 7710)) == {"isp1"}
                if workers > 1:
                    every_worker_reads_the_lan(bed, seen)
            finally:
                srv.kill()
                srv.wait()
            st = status(bed)
            assert st["lan"] == {"device": "lan0", "ifindex": after}
            assert st["counters"]["lan_gone"] == 1
            p.terminate()
            rest = p.stderr.read()
        text = "".join(lines) + rest
        assert text.count("the LAN device lan0 disappeared") == 1, text
        assert text.count(f"the LAN device lan0 is here (index {after}") == 1, text
        assert "could not be opened" not in text, text
        assert "internal error" not in text and "Traceback" not in text, text
    finally:
        restore(bed)


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_started_without_the_lan_device_waits_for_it(bed, tmp_path, workers):
    """lan0 does not exist when mmr starts: one line says it waits (mmr starts all the same,
    its uplinks probed); when lan0 appears it is opened, every worker's ring on it."""
    bed.run("mmr", "ip", "link", "del", "lan0")
    try:
        with running_mmr(bed, "mmr", "run", "forwarding", "--config", policy(tmp_path, workers)) as (p, lines):
            start = "".join(lines)
            assert start.count("the LAN device lan0 does not exist yet") == 1, start
            assert lan_index(bed) is None
            until("the uplinks usable", lambda: all(u["usable"] for u in status(bed)["uplinks"]))
            bed.relink("mmr", "lan0")
            until("mmr takes lan0", lambda: lan_index(bed))
            traffic_both_ways(bed, 7730)
            st = status(bed)
            assert len(st["workers"]) == workers
            assert st["counters"]["lan_gone"] == 0
            if workers > 1:
                every_worker_reads_the_lan(bed, [0] * workers)
            p.terminate()
            rest = p.stderr.read()
        text = start + rest
        assert "the LAN device lan0 is here" in text, text
        assert "internal error" not in text and "Traceback" not in text, text
    finally:
        restore(bed)
