"""Uplinks that come and go (issue 11), live in the ISP testbed: a device deleted and
re-created under its name (a modem re-enumerating: new ifindex), the L3 uplink's TUN
re-created, mmr started while an uplink's device is missing, and a translating uplink
without an IPv4 address at start.  Real UDP flows across the translation; the kernel's
default offloads stay on.  Every new UDP flow takes the primary uplink (preference 0: the
lowest metric among the usable ones, here the first listed), so where new flows go shows
whether mmr uses the uplink again."""
import json
import re
import time

import pytest

from engine.testbed import ISP, ISP_CN_ADDR4
from netlab import echoing, exists, flow_uplinks, make_testbed, mmr, peer, running_mmr, start_peer, until
from test_nat_live import UPLINKS, status

pytestmark = pytest.mark.privileged

CN4 = "::ffff:" + ISP_CN_ADDR4
PRIMARY = '\n[[rule]]\nproto = "udp"\npreference = 0\n'


@pytest.fixture(scope="module")
def bed():
    with make_testbed("chrn", ISP) as tb:
        yield tb


def policy(tmp_path, uplinks, engine="", extra=""):
    p = tmp_path / "churn.toml"
    p.write_text('[engine]\nlan = "lan0"\n' + engine + "\n" + "".join(UPLINKS[u] for u in uplinks)
                 + PRIMARY + extra)
    return str(p)


def uplink(tb, name) -> dict:
    return {u["name"]: u for u in status(tb)["uplinks"]}[name]


def flows_on(tb, dport) -> set:
    return set(flow_uplinks(tb, "mmr", dport))


def restore(tb, dev):
    """The testbed as built: the device back if a test left it deleted, the MMR's routes."""
    if not exists(tb, "mmr", dev):
        tb.relink("mmr", dev)
    for rt in ISP.routes["mmr"]:
        tb.run("mmr", "ip", *rt, check=False)


def echo(tb, port, n=5) -> dict:
    """n UDP echoes MN -> CN (IPv4: translated) on a new flow."""
    srv = start_peer(tb, "cn", "echo-server", port, 10, CN4)
    try:
        return json.loads(peer(tb, "mn", "echo-client", CN4, port, n).stdout)
    finally:
        srv.kill()
        srv.wait()


def recreate(tb, dev):
    """Delete dev and make it again under its name (veth pair or joined TUNs), as a modem
    re-enumerating does: the kernel gives it a new index."""
    if dev == "up2":
        assert tb.stop_l3link("mmr", "up2")
    else:
        tb.run("mmr", "ip", "link", "del", dev)
    time.sleep(0.5)                   # the flow moves while it is absent
    tb.relink("mmr", dev)


@pytest.mark.parametrize("dev,workers", [("up1", 1), ("up1", 2), ("up2", 1)],
                         ids=["ethernet-1-worker", "ethernet-2-workers", "l3-1-worker"])
def test_a_recreated_device_is_taken_into_use_again(bed, tmp_path, dev, workers):
    """A UDP exchange runs on the primary uplink; its device is deleted and re-created: the
    flow moves to the other uplink and goes on (translated to that uplink's address), mmr
    opens the new device (new ifindex in mmr status, usable again) and new flows take it."""
    name, other = ("isp1", "isp2") if dev == "up1" else ("isp2", "isp1")
    path = policy(tmp_path, (name, other), engine=f"workers = {workers}")
    try:
        with running_mmr(bed, "mmr", "run", "forwarding", "--config", path) as (p, lines):
            before = uplink(bed, name)
            assert before["usable"] and before["ifindex"] is not None, before
            with echoing(bed, "cn", "mn", CN4, 7601, 30, 400) as client:
                until("the flow on the primary uplink", lambda: flows_on(bed, 7601) == {name}, 5)
                recreate(bed, dev)
                assert flows_on(bed, 7601) == {other}                  # moved while the device was gone
                after = until(f"{name} usable again", lambda: (lambda u: u if u["usable"] else None)(
                    uplink(bed, name)), 20)
                out, _ = client.communicate(timeout=60)
            r = json.loads(out)
            assert r["answered"] >= 350, r                     # a short gap while the device was gone
            assert after["ifindex"] not in (None, before["ifindex"]) and after["link"] == "up", after
            st = status(bed)
            assert st["translation"]["moved"] >= 1
            if dev == "up2":
                assert st["next_hops"]["isp2"] == "point-to-point"
            r = echo(bed, 7602)
            assert r["answered"] == 5 and flows_on(bed, 7602) == {name}, r     # new flows: the uplink again
            if workers > 1:
                assert len(st["workers"]) == workers
            p.terminate()
            rest = p.stderr.read()
        text = "".join(lines) + rest
        assert f"device {dev} of uplink {name} disappeared" in text, text
        assert f"uplink {name}: device {dev} is here" in text, text
        assert "internal error" not in text and "Traceback" not in text, text
    finally:
        restore(bed, dev)


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_started_without_an_uplink_device_waits_for_it(bed, tmp_path, workers):
    """up1 does not exist when mmr starts: one line says it waits, the other uplink forwards;
    when up1 appears it is taken into use (new flows take it: it is the primary), with two
    workers in a fanout group made then."""
    bed.run("mmr", "ip", "link", "del", "up1")
    try:
        with running_mmr(bed, "mmr", "run", "forwarding", "--config",
                         policy(tmp_path, ("isp1", "isp2"), engine=f"workers = {workers}")) as (p, lines):
            start = "".join(lines)
            assert start.count("waiting for device up1") == 1, start
            isp1 = uplink(bed, "isp1")
            assert isp1["ifindex"] is None and not isp1["usable"], isp1
            r = echo(bed, 7611)
            assert r["answered"] == 5 and flows_on(bed, 7611) == {"isp2"}, r
            bed.relink("mmr", "up1")
            until("isp1 usable once up1 exists", lambda: uplink(bed, "isp1")["usable"], 20)
            r = echo(bed, 7612)
            assert r["answered"] == 5 and flows_on(bed, 7612) == {"isp1"}, r
            st = status(bed)
            assert st["translation"]["uplinks"]["isp1"]["address"] == "198.18.1.2"
            assert len(st["workers"]) == workers
            p.terminate()
            rest = p.stderr.read()
        assert "internal error" not in rest and "Traceback" not in rest, rest
    finally:
        restore(bed, "up1")


def test_no_uplink_device_at_start(bed, tmp_path):
    """Neither device exists: mmr still starts (a router waits for its modem), says so, and
    forwards once one appears."""
    bed.run("mmr", "ip", "link", "del", "up1")
    try:
        with running_mmr(bed, "mmr", "run", "forwarding", "--config",
                         policy(tmp_path, ("isp1",))) as (p, lines):
            start = "".join(lines)
            assert "no uplink device exists yet" in start, start
            bed.relink("mmr", "up1")
            until("isp1 usable once up1 exists", lambda: uplink(bed, "isp1")["usable"], 20)
            assert echo(bed, 7621)["answered"] == 5
            # an uplink added by a reload into a free slot (test_reload_adds_and_removes_uplinks)
            with open(tmp_path / "churn.toml", "a") as f:
                f.write(UPLINKS["isp2"])
            r = mmr(bed, "reload")
            assert r.returncode == 0 and "added isp2" in r.stdout + r.stderr, r
            until("isp2 usable after the reload", lambda: uplink(bed, "isp2")["usable"], 20)
    finally:
        restore(bed, "up1")


def test_masquerade_waits_for_the_ipv4_address(bed, tmp_path):
    """nat = "masquerade" on an uplink without an IPv4 address at start: logged once, and
    translation starts when the address comes (CN answers)."""
    bed.run("mmr", "ip", "addr", "del", "198.18.1.2/24", "dev", "up1")
    try:
        extra = UPLINKS["isp1"].replace('device = "up1"', 'device = "up1"\nnat = "masquerade"')
        p = tmp_path / "masq.toml"
        p.write_text('[engine]\nlan = "lan0"\n' + extra + PRIMARY)
        with running_mmr(bed, "mmr", "run", "forwarding", "--config", str(p)) as (proc, lines):
            start = "".join(lines)
            assert start.count("isp1 (up1) has no IPv4 address") == 1, start
            assert status(bed)["translation"]["uplinks"]["isp1"]["address"] is None
            bed.run("mmr", "ip", "addr", "add", "198.18.1.2/24", "dev", "up1")
            for rt in ISP.routes["mmr"]:
                bed.run("mmr", "ip", *rt, check=False)
            until("the address taken", lambda: status(bed)["translation"]["uplinks"]["isp1"]["address"]
                  == "198.18.1.2", 5)
            assert echo(bed, 7631)["answered"] == 5
            proc.terminate()
            rest = proc.stderr.read()
        assert "translates IPv4 to 198.18.1.2" in rest and "has no IPv4 address" not in rest, rest
    finally:
        bed.run("mmr", "ip", "addr", "add", "198.18.1.2/24", "dev", "up1", check=False)
        restore(bed, "up1")


def guarded(tb) -> set:
    """The devices the kernel guard's prerouting chain leaves to mmr."""
    text = tb.run("mmr", "nft", "list", "chain", "inet", "mmr", "pre")
    m = re.search(r'iifname != \{ ([^}]*) \} accept', text)
    return set(re.findall(r'"([^"]+)"', m.group(1))) if m else set()


def reload_with(bed, tmp_path, uplinks, extra=""):
    policy(tmp_path, uplinks, extra=extra)
    r = mmr(bed, "reload")
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_reload_adds_and_removes_uplinks(bed, tmp_path, workers):
    """mmr starts with isp1 alone; a reload adds isp2 (a free slot: status lists it, new flows
    take it once isp1 is down by the operator's word); a reload removing isp1 while a UDP
    exchange runs on it moves the flow to isp2, where it goes on (counted as moved, and
    status no longer lists isp1); a reload with more uplinks than slots is refused in one
    sentence naming the key, and the running uplinks stay as they were."""
    with running_mmr(bed, "mmr", "run", "forwarding", "--config",
                     policy(tmp_path, ("isp1",), engine=f"workers = {workers}")) as (p, lines):
        assert [u["name"] for u in status(bed)["uplinks"]] == ["isp1"]
        r = echo(bed, 7701)
        assert r["answered"] == 5 and flows_on(bed, 7701) == {"isp1"}, r
        rc, out = reload_with(bed, tmp_path, ("isp1", "isp2"))
        assert rc == 0 and "added isp2" in out, out
        until("isp2 usable after the reload", lambda: uplink(bed, "isp2")["usable"], 20)
        assert [u["name"] for u in status(bed)["uplinks"]] == ["isp1", "isp2"]
        assert guarded(bed) == {"lan0", "up1", "up2"}            # the kernel guard covers up2 now
        assert flows_on(bed, 7701) == {"isp1"}                    # isp1's flows stay where they are
        assert mmr(bed, "uplink", "isp1", "down").returncode == 0
        r = echo(bed, 7702)
        assert r["answered"] == 5 and flows_on(bed, 7702) == {"isp2"}, r
        assert mmr(bed, "uplink", "isp1", "auto").returncode == 0
        until("isp1 usable again", lambda: uplink(bed, "isp1")["usable"], 10)

        moved_before = status(bed)["moved_flows"]
        with echoing(bed, "cn", "mn", CN4, 7703, 30, 400) as client:
            until("the flow on isp1", lambda: flows_on(bed, 7703) == {"isp1"}, 5)
            rc, out = reload_with(bed, tmp_path, ("isp2",))
            assert rc == 0 and "removed isp1" in out, out
            assert flows_on(bed, 7703) == {"isp2"}
            out, _ = client.communicate(timeout=60)
        r = json.loads(out)
        assert r["answered"] >= 350, r                             # the flow went on through isp2
        st = status(bed)
        assert [u["name"] for u in st["uplinks"]] == ["isp2"]
        assert guarded(bed) == {"lan0", "up2"}                    # up1 is the kernel's again
        assert "isp1" not in st["translation"]["uplinks"] and "isp1" not in st["next_hops"]
        assert st["moved_flows"] >= moved_before + 1
        assert {"uplink": "isp1", "reason": "removed by reload"}.items() <= st["failovers"][-1].items()
        if workers > 1:
            assert len(st["workers"]) == workers

        # more uplinks than the 4 slots (the default for one uplink at start): refused
        many = "".join(f'\n[[uplink]]\nname = "x{k}"\ndevice = "x{k}"\n' for k in range(4))
        rc, out = reload_with(bed, tmp_path, ("isp2",), extra=many)
        assert rc != 0 and "5 uplinks do not fit in the engine's 4 uplink slots; raise [engine] " \
            "uplink_slots to 5 or more and restart mmr" in out, out
        assert [u["name"] for u in status(bed)["uplinks"]] == ["isp2"]
        r = echo(bed, 7704)
        assert r["answered"] == 5 and flows_on(bed, 7704) == {"isp2"}, r
        p.terminate()
        rest = p.stderr.read()
    text = "".join(lines) + rest
    assert "uplink isp1 is removed by the reload" in text, text
    assert "internal error" not in text and "Traceback" not in text, text


def test_reload_adds_an_uplink_whose_device_comes_later(bed, tmp_path):
    """An uplink added by a reload before its device exists is waited for (said once, listed
    without an ifindex, unusable) and taken into use when the device appears."""
    bed.run("mmr", "ip", "link", "del", "up1")
    try:
        with running_mmr(bed, "mmr", "run", "forwarding", "--config", policy(tmp_path, ("isp2",))) as (p, lines):
            rc, out = reload_with(bed, tmp_path, ("isp2", "isp1"))
            assert rc == 0 and "added isp1" in out, out
            isp1 = uplink(bed, "isp1")
            assert isp1["ifindex"] is None and not isp1["usable"], isp1
            bed.relink("mmr", "up1")
            until("isp1 usable once up1 exists", lambda: uplink(bed, "isp1")["usable"], 20)
            assert mmr(bed, "uplink", "isp2", "down").returncode == 0
            r = echo(bed, 7711)
            assert r["answered"] == 5 and flows_on(bed, 7711) == {"isp1"}, r
            p.terminate()
            rest = p.stderr.read()
        text = "".join(lines) + rest
        assert text.count("uplink isp1: waiting for device up1") == 1, text
        assert "uplink isp1: device up1 is here" in text, text
        assert "internal error" not in text and "Traceback" not in text, text
    finally:
        restore(bed, "up1")
