"""Without ``lan_prefixes`` in the policy, the LAN is what the LAN device's addresses are on,
learned at start and followed over netlink (issue 11 item 6): a real LAN is never silently
replaced by the project's own testbed prefix."""
import ipaddress
import json
import subprocess
import sys
import time

import pytest

from engine.config import default_config_path, load_config
from engine.netlink import State
from engine.testbed import CN_ADDR, CN_ADDR4
from netlab import ROOT, in_ns, make_testbed, peer, running_router


def test_networks_of_a_device_leave_link_local_out():
    st = State()
    st.addrs[3] = {ipaddress.ip_address("2001:db8:1::1").packed: (64, None),
                   ipaddress.ip_address("fe80::1").packed: (64, None),
                   ipaddress.ip_address("192.0.2.1").packed: (24, ipaddress.ip_address("192.0.2.255").packed),
                   ipaddress.ip_address("169.254.3.4").packed: (16, None),
                   ipaddress.ip_address("2001:db8:1::2").packed: (64, None),
                   ipaddress.ip_address("198.18.7.7").packed: (32, None)}
    assert st.networks(3) == [ipaddress.ip_network("2001:db8:1::/64"), ipaddress.ip_network("192.0.2.0/24"),
                              ipaddress.ip_network("198.18.7.7/32")]
    assert st.networks(4) == []


def test_a_policy_without_lan_prefixes_learns_them(tmp_path):
    text = open(default_config_path()).read()
    assert "lan_prefixes =" in text
    text = "\n".join(line for line in text.splitlines() if not line.startswith("lan_prefixes"))
    path = tmp_path / "p.toml"
    path.write_text(text)
    cfg = load_config(str(path))
    assert cfg.lan_prefixes == [] and cfg.lan_prefixes_learned
    assert not load_config(None).lan_prefixes_learned


def learned_policy(tmp_path) -> str:
    text = open(default_config_path()).read()
    text = "\n".join(line for line in text.splitlines() if not line.startswith("lan_prefixes"))
    path = tmp_path / "learned.toml"
    path.write_text(text)
    return str(path)


def running_config(tb) -> dict:
    p = subprocess.run(in_ns(tb, "mmr", sys.executable, "-m", "engine", "status", "--config", "--json"),
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["config"]


@pytest.mark.privileged
def test_router_learns_and_follows_the_lan_prefixes(tmp_path):
    """mmr run with no lan_prefixes: the replies from CN reach MN (both families) because the
    LAN's networks were learned from lan0; an address added to lan0 adds its network within a
    second and its removal takes it away again."""
    with make_testbed("lanl") as tb:
        with running_router(tb, "--config", learned_policy(tmp_path)) as (_, lines):
            assert any("LAN prefixes (from lan0): 2001:db8:1::/64, 192.0.2.0/24" in x for x in lines), lines
            assert running_config(tb)["engine"]["lan_prefixes"] == ["2001:db8:1::/64", "192.0.2.0/24"]
            assert peer(tb, "mn", "reach", CN_ADDR, "2").returncode == 0
            assert peer(tb, "mn", "reach", CN_ADDR4, "2").returncode == 0
            tb.run("mmr", "ip", "addr", "add", "2001:db8:1:77::1/64", "dev", "lan0", "nodad")
            want = ["2001:db8:1::/64", "2001:db8:1:77::/64", "192.0.2.0/24"]
            deadline = time.monotonic() + 3
            while running_config(tb)["engine"]["lan_prefixes"] != want and time.monotonic() < deadline:
                time.sleep(0.1)
            assert running_config(tb)["engine"]["lan_prefixes"] == want
            tb.run("mmr", "ip", "addr", "del", "2001:db8:1:77::1/64", "dev", "lan0")
            deadline = time.monotonic() + 3
            while running_config(tb)["engine"]["lan_prefixes"] != want[::2] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert running_config(tb)["engine"]["lan_prefixes"] == want[::2]
            assert peer(tb, "mn", "reach", CN_ADDR, "2").returncode == 0
