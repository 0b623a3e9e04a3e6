"""mmr reload adds and removes interfaces under mmr host, live, in the hostnat testbed (R1 and
R2 route nothing to vi0's prefix and drop foreign sources, so every IPv4 packet from vi0 must
leave translated to the interface's own address).  An added interface takes a free uplink
slot and comes up as at start (translated, probed, guarded); a removed one's flows move to
the other and its device is the kernel's again.  vi0 keeps its MTU: an interface with a
smaller one is refused in one sentence.  The kernel's default offloads stay on."""
import json
import re
import subprocess
import sys

import pytest

from engine.testbed import HOSTNAT
from netlab import ROOT, echoing, in_ns, make_testbed, peer, start_peer, until
# the hostnat testbed's addresses and the ways to run and ask mmr host there, as its
# start-up test uses them
from test_host_nat import FREE, IFACE4, PEER_DEV, PINNED, VI4, flows_to, running, status

pytestmark = pytest.mark.privileged

GATEWAY4 = {"i1": "198.18.21.1", "i2": "198.18.22.1"}
VI6 = "2001:db8:99::10"           # routed by nobody: only NAPT66 gets its packets anywhere
PEER6 = "2001:db8:ee::1"
IFACE6 = {"i1": "2001:db8:b1::2", "i2": "2001:db8:b2::2"}

PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(1.5)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except socket.timeout:
    print("silence")
except ConnectionRefusedError:
    print("refused")
"""


@pytest.fixture(scope="module")
def bed():
    with make_testbed("hr", HOSTNAT) as tb:
        yield tb


def policy_text(uplinks, pins=(), extra=None, v6=False) -> str:
    """[host] with vi0's IPv4 address (v6: and its IPv6 one), the interfaces named (device =
    name), a pin per name in pins (PINNED[name] only via that interface); extra: more keys
    per interface."""
    addrs = f'"{VI4}/32"' + (f', "{VI6}/128"' if v6 else "")
    text = f'[host]\nvi = "vi0"\naddresses = [{addrs}]\nroutes = ["default"]\n'
    for name in uplinks:
        text += (f'\n[[uplink]]\nname = "{name}"\ndevice = "{name}"\nprobe_targets = ["{GATEWAY4[name]}"]\n'
                 + (extra or {}).get(name, ""))
    for name in pins:
        text += f'\n[[rule]]\ndst = "{PINNED[name]}/32"\nuplink = "{name}"\n'
    return text


def write_policy(tmp_path, *args, **kw) -> str:
    p = tmp_path / "hostreload.toml"
    p.write_text(policy_text(*args, **kw))
    return str(p)


def reload(tb) -> tuple[int, str]:
    p = subprocess.run(in_ns(tb, "host", sys.executable, "-m", "engine", "reload"),
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    return p.returncode, p.stdout + p.stderr


def uplink(tb, name) -> dict:
    return {u["name"]: u for u in status(tb)["uplinks"]}[name]


def guarded(tb) -> set:
    """The devices the kernel guard's prerouting chain (table inet mmrhost) leaves to mmr."""
    text = tb.run("host", "nft", "list", "chain", "inet", "mmrhost", "pre")
    m = re.search(r'iifname != (\{ [^}]* \}|"[^"]+") accept', text)       # nft drops braces around one
    return set(re.findall(r'"([^"]+)"', m.group(1))) if m else set()


def vi_mtu(tb) -> int:
    return int(tb.run("host", "cat", "/sys/class/net/vi0/mtu"))


def udp_from_vi0(tb, dst, port) -> set:
    """(source, device at the peer) of 10 datagrams sent from vi0 (the host's default route)."""
    sink = start_peer(tb, "peer", "udp-sink", port, 2)
    assert peer(tb, "host", "udp-send", "::ffff:" + dst, port, 10, -1, -1).returncode == 0
    got = [json.loads(x) for x in sink.communicate(timeout=10)[0].splitlines() if x.startswith("{")]
    assert len(got) >= 9, got
    return {(g["src"], g["dev"]) for g in got}


def tcp_fetch(tb, dst, port, size=2_000_000) -> dict:
    srv = start_peer(tb, "peer", "tcp-serve", port, size)
    f = json.loads(peer(tb, "host", "tcp-fetch", "::ffff:" + dst, port, size, timeout=60).stdout)
    srv.wait(timeout=10)
    return f


def probe_port(tb, addr, port) -> str:
    """A TCP connection from the peer to addr:port: what it met."""
    p = subprocess.run(in_ns(tb, "peer", sys.executable, "-c", PROBE, addr, port),
                       capture_output=True, text=True, timeout=30)
    return p.stdout.strip()


def host_stack_hears(tb, addr, port) -> int:
    """Datagrams from the peer to addr:port that a socket on the host receives (5 sent): the
    kernel guard keeps replies to a mapping's port on a translating interface's address from
    the host's stack, and leaves every other device's to it."""
    sink = start_peer(tb, "host", "udp-sink", port, 1.5)
    p = subprocess.run(in_ns(tb, "peer", sys.executable, "-c",
                             "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                             f"for _ in range(5): s.sendto(b'x', ('{addr}', {port})); time.sleep(0.02)"),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return sum(1 for x in sink.communicate(timeout=10)[0].splitlines() if x.startswith("{"))


def test_compiled_modules_are_loaded():
    from engine import _forward, _nat, _tun

    assert all(m.__file__.endswith(".so") for m in (_forward, _nat, _tun))


def test_reload_adds_an_interface_and_traffic_uses_it(bed, tmp_path):
    """mmr host starts over i1 alone (i2 is the kernel's); a reload adds i2 with a pin: i2
    translates to its own address, is probed and guarded, and what is pinned to it leaves
    there (UDP, TCP hash-checked, ping) while i1's flows stay on i1 and vi0 keeps its MTU."""
    path = write_policy(tmp_path, ("i1",), pins=("i1",))
    with running(bed, path) as (p, lines):
        st = status(bed)
        assert [u["name"] for u in st["uplinks"]] == ["i1"]
        assert "i2" not in st["translation"]["uplinks"]
        assert guarded(bed) == {"i1"}
        mtu = vi_mtu(bed)
        # before: everything from vi0 leaves by i1, the address i2 was to carry too
        assert udp_from_vi0(bed, PINNED["i2"], 7801) == {("::ffff:" + IFACE4["i1"], PEER_DEV["i1"])}
        assert host_stack_hears(bed, IFACE4["i2"], mapping_port(bed)) == 5       # i2 is the kernel's
        with echoing(bed, "peer", "host", "::ffff:" + PINNED["i1"], 7802, 45, 600) as client:
            until("the i1 flow", lambda: flows_to(bed, 7802) == {"i1"}, 5)
            write_policy(tmp_path, ("i1", "i2"), pins=("i1", "i2"))
            rc, out = reload(bed)
            assert rc == 0 and "added i2" in out, out
            until("i2 usable after the reload", lambda: uplink(bed, "i2")["usable"], 20)
            st = status(bed)
            assert [u["name"] for u in st["uplinks"]] == ["i1", "i2"]
            t = st["translation"]["uplinks"]["i2"]
            assert t["translating"] and t["address"] == IFACE4["i2"], t
            assert guarded(bed) == {"i1", "i2"}               # the kernel guard covers i2 now
            assert flows_to(bed, 7802) == {"i1"}              # i1's flows stay where they are
            # what is pinned to i2 leaves there, translated to i2's address
            assert udp_from_vi0(bed, PINNED["i2"], 7803) == {("::ffff:" + IFACE4["i2"], PEER_DEV["i2"])}
            f = tcp_fetch(bed, PINNED["i2"], 7804)
            assert f["ok"] and f["bytes"] == 2_000_000, f
            assert flows_to(bed, 7804) == {"i2"}
            out = bed.run("host", "ping", "-4", "-c", "3", "-i", "0.2", "-W", "2", PINNED["i2"], check=False)
            assert out is not None and " 0% packet loss" in out, out
            st = status(bed)
            assert st["translation"]["uplinks"]["i2"]["mappings"]["tcp"] >= 1, st["translation"]
            assert st["translation"]["uplinks"]["i2"]["mappings"]["icmp"] >= 1, st["translation"]
            # replies to a mapping's port on i2's address are mmr's now (the guard keeps them
            # from the host's stack, which would answer with a reset): a TCP connection
            # there meets silence, datagrams reach no socket of the host
            assert probe_port(bed, IFACE4["i2"], mapping_port(bed)) == "silence"
            assert host_stack_hears(bed, IFACE4["i2"], mapping_port(bed)) == 0
            assert vi_mtu(bed) == mtu
            echoed, _ = client.communicate(timeout=60)
        r = json.loads(echoed)
        assert r["answered"] >= 590, r                     # the reload did not disturb i1's flow
        p.terminate()
        rest = p.stderr.read()
    text = "".join(lines) + rest
    assert "uplink i2 translates IPv4 to 198.18.22.2" in text, text
    assert "internal error" not in text and "Traceback" not in text, text


def mapping_port(tb) -> int:
    """A port mappings take (nat_ports "auto": 1024-65535 outside the kernel's range)."""
    lo, hi = map(int, tb.run("host", "cat", "/proc/sys/net/ipv4/ip_local_port_range").split())
    return 1024 if lo > 1024 else hi + 1


def test_reload_removes_an_interface_its_flows_move(bed, tmp_path):
    """mmr host over i1 and i2; a UDP exchange from vi0 runs on one of them; a reload removes
    that one: the flow moves to the other (counted in moved_flows; a new mapping there, the
    removed one's mappings flushed at once) and goes on, status no longer lists the removed interface, and its device is the kernel's again
    (the guard leaves it alone: datagrams to a mapping's port there reach the host's
    sockets).  A TCP transfer afterwards goes over the other."""
    path = write_policy(tmp_path, ("i1", "i2"))
    with running(bed, path) as (p, lines):
        until("both usable", lambda: all(u["usable"] for u in status(bed)["uplinks"]), 20)
        assert guarded(bed) == {"i1", "i2"}
        mtu = vi_mtu(bed)
        with echoing(bed, "peer", "host", "::ffff:" + FREE, 7811, 30, 300) as client:
            (was,) = until("the flow", lambda: flows_to(bed, 7811), 5)
            other = "i2" if was == "i1" else "i1"
            before = status(bed)
            assert host_stack_hears(bed, IFACE4[was], mapping_port(bed)) == 0      # mmr's while it is there
            write_policy(tmp_path, (other,))
            rc, out = reload(bed)
            assert rc == 0 and f"removed {was}" in out, out
            assert flows_to(bed, 7811) == {other}
            echoed, _ = client.communicate(timeout=60)
        r = json.loads(echoed)
        assert r["answered"] >= 280, r                     # it went on through the other interface
        st = status(bed)
        assert [u["name"] for u in st["uplinks"]] == [other]
        assert was not in st["translation"]["uplinks"] and was not in st["next_hops"]
        assert st["translation"]["uplinks"][other]["mappings"]["udp"] >= 1, st["translation"]
        assert st["moved_flows"] >= before["moved_flows"] + 1
        assert {"uplink": was, "reason": "removed by reload"}.items() <= st["failovers"][-1].items()
        assert guarded(bed) == {other}
        assert host_stack_hears(bed, IFACE4[was], mapping_port(bed)) == 5         # the kernel's again
        assert vi_mtu(bed) == mtu
        f = tcp_fetch(bed, FREE, 7812)
        assert f["ok"] and f["bytes"] == 2_000_000, f
        assert flows_to(bed, 7812) == {other}
        assert udp_from_vi0(bed, FREE, 7813) == {("::ffff:" + IFACE4[other], PEER_DEV[other])}
        p.terminate()
        rest = p.stderr.read()
    text = "".join(lines) + rest
    assert f"uplink {was} is removed by the reload" in text, text
    assert "has no IPv4 address" not in text, text            # removed, not waiting for an address
    assert "internal error" not in text and "Traceback" not in text, text


def test_reload_refusals_under_mmr_host_are_one_sentence(bed, tmp_path):
    """An added interface with a smaller MTU than vi0's, one whose device does not exist, and
    one with nat6 = "npt" are each refused in one sentence; the running interfaces stay as
    they were and traffic goes on.  Removed and added back in two reloads, an interface
    works again."""
    path = write_policy(tmp_path, ("i1",))
    with running(bed, path) as (p, lines):
        mtu = vi_mtu(bed)
        bed.run("host", "ip", "link", "set", "i2", "mtu", str(mtu - 100))
        try:
            write_policy(tmp_path, ("i1", "i2"))
            rc, out = reload(bed)
        finally:
            bed.run("host", "ip", "link", "set", "i2", "mtu", str(mtu))
        assert rc != 0 and (f"interface i2's device i2 has MTU {mtu - 100}, below vi0's {mtu}; raise i2's MTU "
                            f"to {mtu}, or set host.mtu = {mtu - 100} and restart mmr host") in out, out
        assert out.count("\n") <= 1, out
        (tmp_path / "hostreload.toml").write_text(policy_text(("i1",)) + '\n[[uplink]]\nname = "i3"\n'
                                                                         'device = "i3"\n')
        rc, out = reload(bed)
        assert rc != 0 and "device 'i3' of the added interface i3 does not exist" in out, out
        write_policy(tmp_path, ("i1", "i2"), extra={"i2": 'nat6 = "npt"\n'})
        rc, out = reload(bed)
        assert rc != 0 and "uplink[1].nat6" in out and '"npt" is not available in host mode' in out, out
        st = status(bed)
        assert [u["name"] for u in st["uplinks"]] == ["i1"] and guarded(bed) == {"i1"}
        assert udp_from_vi0(bed, FREE, 7821) == {("::ffff:" + IFACE4["i1"], PEER_DEV["i1"])}
        # the MTU back where it was: i2 is taken; removed and added back, i1 works again
        write_policy(tmp_path, ("i1", "i2"))
        rc, out = reload(bed)
        assert rc == 0 and "added i2" in out, out
        write_policy(tmp_path, ("i2",))
        rc, out = reload(bed)
        assert rc == 0 and "removed i1" in out, out
        until("i2 usable", lambda: uplink(bed, "i2")["usable"], 20)
        assert udp_from_vi0(bed, FREE, 7822) == {("::ffff:" + IFACE4["i2"], PEER_DEV["i2"])}
        write_policy(tmp_path, ("i2", "i1"), pins=("i1",))
        rc, out = reload(bed)
        assert rc == 0 and "added i1" in out, out
        until("i1 usable again", lambda: uplink(bed, "i1")["usable"], 20)
        assert status(bed)["translation"]["uplinks"]["i1"]["address"] == IFACE4["i1"]
        assert udp_from_vi0(bed, PINNED["i1"], 7823) == {("::ffff:" + IFACE4["i1"], PEER_DEV["i1"])}
        p.terminate()
        rest = p.stderr.read()
    text = "".join(lines) + rest
    assert "internal error" not in text and "Traceback" not in text, text


def test_reload_adds_and_removes_a_napt66_interface(bed, tmp_path):
    """IPv6 from vi0 (routed by nobody) with nat6 = "masquerade": mmr host starts over i1; a
    reload adds i2 with a pin for the peer's IPv6 address: it leaves i2 with i2's own IPv6
    address; a reload removing i2 (and its pin) sends it by i1 again, with i1's address."""
    six = 'nat6 = "masquerade"\n'

    def text(names, pin6):
        t = policy_text(names, extra={n: six for n in names}, v6=True)
        return t + (f'\n[[rule]]\ndst = "{PEER6}/128"\nuplink = "{pin6}"\n' if pin6 else "")

    def udp6_sources(port) -> set:
        sink = start_peer(bed, "peer", "udp-sink", port, 2)
        assert peer(bed, "host", "udp-send", PEER6, port, 10, -1, -1).returncode == 0
        got = [json.loads(x) for x in sink.communicate(timeout=10)[0].splitlines() if x.startswith("{")]
        assert len(got) >= 9, got
        return {g["src"] for g in got}

    path = tmp_path / "hostreload.toml"
    path.write_text(text(("i1",), None))
    with running(bed, str(path)) as (p, lines):
        assert udp6_sources(7831) == {IFACE6["i1"]}
        path.write_text(text(("i1", "i2"), "i2"))
        rc, out = reload(bed)
        assert rc == 0 and "added i2" in out, out
        until("i2 usable after the reload", lambda: uplink(bed, "i2")["usable"], 20)
        assert status(bed)["translation"]["uplinks"]["i2"]["address6"] == IFACE6["i2"]
        assert udp6_sources(7832) == {IFACE6["i2"]}
        srv = start_peer(bed, "peer", "tcp-serve", 7833, 2_000_000)
        f = json.loads(peer(bed, "host", "tcp-fetch", PEER6, 7833, 2_000_000, timeout=60).stdout)
        srv.wait(timeout=10)
        assert f["ok"] and f["bytes"] == 2_000_000, f
        assert flows_to(bed, 7833) == {"i2"}
        assert status(bed)["translation"]["uplinks"]["i2"]["mappings6"]["tcp"] >= 1
        path.write_text(text(("i1",), None))
        rc, out = reload(bed)
        assert rc == 0 and "removed i2" in out, out
        assert "i2" not in status(bed)["translation"]["uplinks"]
        assert udp6_sources(7834) == {IFACE6["i1"]}
        p.terminate()
        rest = p.stderr.read()
    text_ = "".join(lines) + rest
    assert "uplink i2 translates IPv6 to 2001:db8:b2::2 (NAPT66)" in text_, text_
    assert "internal error" not in text_ and "Traceback" not in text_, text_
