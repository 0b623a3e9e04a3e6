"""Policy file: every mistake is one sentence naming file, key path and fix; exit code 2."""
import os
import subprocess
import sys

import pytest

from engine import constants as C
from engine.config import characteristics_matrix, load_config
from engine.errors import ConfigError

GOOD = """
[engine]
lan = "lan0"
option_type = 0x3E
[[uplink]]
name = "ar1"
device = "up1"
qos = 1.0
[[uplink]]
name = "ar2"
device = "up2"
"""


def write(tmp_path, text, name="p.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_default_config_is_the_draft_testbed():
    cfg = load_config(None)
    assert [u.name for u in cfg.uplinks] == ["ar1", "ar2"]
    assert cfg.option_type == 0x3E and cfg.flow_capacity > 0
    assert set(cfg.policies) >= {0, 1, 2, 3}
    assert characteristics_matrix(cfg).shape == (2, C.N_CHARS)


def test_good_config_defaults(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.uplinks[1].metric == 1 and cfg.uplinks[0].chars["qos"] == 1.0
    assert cfg.idle_timeout_s == 120.0


LAN = GOOD.replace('[engine]', '[engine]\nlan_prefixes = ["fd00:1::/64", "192.168.1.0/24"]')
FWD = '\n[[forward]]\nproto = "tcp"\nport = 8080\nto = "fd00:1::10"\n'
FWD4 = FWD.replace("fd00:1::10", "192.168.1.10")


BAD = [
    ("unknown key", GOOD.replace('lan = "lan0"', 'lan = "lan0"\nlna = 1'), "engine.lna", "remove it"),
    ("wrong type", GOOD.replace('qos = 1.0', 'qos = "high"'), "uplink[0].qos", "must be a number"),
    ("out of range", GOOD.replace('qos = 1.0', 'loss = 1.5'), "uplink[0].loss", "out of range"),
    ("option type", GOOD.replace("0x3E", "0x7E"), "engine.option_type", "001xxxxx"),
    ("duplicate uplink", GOOD.replace('name = "ar2"', 'name = "ar1"'), "uplink[1].name", "duplicate"),
    ("duplicate device", GOOD.replace('device = "up2"', 'device = "up1"'), "uplink[1].device", "own device"),
    ("missing name", GOOD.replace('name = "ar2"\n', ''), "uplink[1].name", "is missing"),
    ("no uplink", '[engine]\nlan = "x"\n', "uplink", "add at least one"),
    ("unknown characteristic", GOOD + '[policy.4]\nnetwork = ["speed"]\nflow = [1]\n',
     "policy.4.network[0]", "unknown characteristic"),
    ("unknown class parameter", GOOD + '[policy.4]\nnetwork = ["qos"]\nflow = ["urgency"]\n',
     "policy.4.flow[0]", "unknown class parameter"),
    ("vector lengths", GOOD + '[policy.9]\nnetwork = ["qos", "cost"]\nflow = [1]\n',
     "policy.9", "same length"),
    ("built-in policy", GOOD + '[policy.2]\nnetwork = ["qos"]\nflow = [1]\n', "policy.2", "built in"),
    ("bad prefix", GOOD + '[[rule]]\ndst = "2001:db8::1/32"\nservice = "voip"\n', "rule[0].dst", "prefix"),
    ("rule sets nothing", GOOD + '[[rule]]\nproto = "udp"\n', "rule[0]", "sets nothing"),
    ("bad service", GOOD + '[[rule]]\nproto = "udp"\nservice = "gaming"\n', "rule[0].service", "voip"),
    ("bad port range", GOOD + '[[rule]]\ndport = "9-3"\nservice = "data"\n', "rule[0].dport", "range"),
    ("class table incomplete", GOOD + '[classes]\nw = { voip = 1.0 }\n', "classes.w", "all four"),
    ("bad mac", GOOD.replace('device = "up2"', 'device = "up2"\ngateway_mac = "zz"'),
     "uplink[1].gateway_mac", "MAC"),
    ("syntax", GOOD + "[[uplink]\n", None, "not valid TOML"),
    ("measure what", GOOD + '[monitor]\nmeasure = ["cost"]\n', "monitor.measure", "cannot be measured"),
    ("failback", GOOD + '[monitor]\nfailback = "sometimes"\n', "monitor.failback", '"stay" or "return"'),
    ("probe timeout", GOOD + '[monitor]\nprobe_interval_ms = 1000\nprobe_timeout_ms = 5\n',
     "monitor.probe_timeout_ms", "tenth"),
    ("metrics listen", GOOD + '[monitor]\nmetrics_listen = "9464"\n', "monitor.metrics_listen", "host:port"),
    ("control socket", GOOD + '[monitor]\ncontrol_socket = "mmr.sock"\n', "monitor.control_socket",
     "absolute path"),
    ("probe target", GOOD.replace('device = "up2"', 'device = "up2"\nprobe_targets = ["ar2.example"]'),
     "uplink[1].probe_targets", "not an IPv6 or IPv4 address"),
    ("monitor key", GOOD + '[monitor]\ninterval = 1\n', "monitor.interval", "remove it"),
    ("nat mode", GOOD.replace('device = "up2"', 'device = "up2"\nnat = "yes"'), "uplink[1].nat",
     "not a NAT mode"),
    ("nat6 word", GOOD.replace('device = "up2"', 'device = "up2"\nnat6 = "napt"'), "uplink[1].nat6",
     'write "npt", "masquerade" or "none"'),
    ("npt prefix word", GOOD.replace('device = "up2"', 'device = "up2"\nnat6 = "npt"\nnpt_prefix = "automatic"'),
     "uplink[1].npt_prefix", "automatic"),
    ("npt auto, LAN too long", GOOD.replace('[engine]', '[engine]\nlan_prefixes = ["fd00:1::/96"]').replace(
        'device = "up2"', 'device = "up2"\nnat6 = "npt"'), "uplink[1].npt_prefix", "/64 or shorter"),
    ("npt prefix length", GOOD.replace('[engine]', '[engine]\nlan_prefixes = ["2001:db8:1::/64"]').replace(
        'device = "up2"', 'device = "up2"\nnat6 = "npt"\nnpt_prefix = "2001:db8:a2:100::/56"'), "uplink[1].npt_prefix",
     "no IPv6 LAN prefix is"),
    ("npt prefix v4", GOOD.replace('device = "up2"', 'device = "up2"\nnat6 = "npt"\nnpt_prefix = "10.0.0.0/8"'),
     "uplink[1].npt_prefix", "not an IPv6 prefix"),
    ("nat ports", GOOD.replace('[engine]', '[engine]\nnat_ports = "100-200"'), "engine.nat_ports",
     "at least 64 ports"),
    ("gateway text", GOOD.replace('device = "up2"', 'device = "up2"\ngateway = "router"'), "uplink[1].gateway",
     "not an IPv6 or IPv4 address"),
    ("gateway4 text", GOOD.replace('device = "up2"', 'device = "up2"\ngateway4 = "dhcp"'), "uplink[1].gateway4",
     'write "auto" or the IPv4 next hop address'),
    ("gateway6 type", GOOD.replace('device = "up2"', 'device = "up2"\ngateway6 = 6'), "uplink[1].gateway6", ""),
    ("gateway6 and a mac", GOOD.replace('device = "up2"', 'device = "up2"\ngateway6 = "fe80::1"\n'
                                        'gateway_mac = "02:00:00:00:00:01"'), "uplink[1].gateway6",
     "leave out gateway6 or gateway_mac"),
    ("edge mode", GOOD.replace('device = "up2"', 'device = "up2"\nedge = "closed"'), "uplink[1].edge",
     "not an edge mode"),
    ("routed outside the LAN", GOOD.replace('[engine]', '[engine]\nlan_prefixes = ["2001:db8:1::/64"]\n'
                                            'routed_prefixes = ["2001:db8:2::/64"]'),
     "engine.routed_prefixes", "not inside the LAN's lan_prefixes"),
    ("routed not a prefix", GOOD.replace('[engine]', '[engine]\nrouted_prefixes = ["2001:db8:1::1/64"]'),
     "engine.routed_prefixes[0]", "not a valid prefix"),
    ("edge capacity", GOOD.replace('[engine]', '[engine]\nedge_capacity = 0'), "engine.edge_capacity", "1 to"),
    ("forward outside the LAN", LAN + FWD.replace("fd00:1::10", "fd00:2::10"), "forward[0].to",
     "outside the LAN prefixes"),
    ("forward clash", LAN + FWD + FWD.replace("8080", '"8000-8080"'), "forward[1].port", "clashes with forward[0]"),
    ("forward port 0", LAN + FWD.replace("8080", "0"), "forward[0].port", "not a port 1..65535"),
    ("forward port 70000", LAN + FWD.replace("8080", "70000"), "forward[0].port", "not a port"),
    ("forward unknown uplink", LAN + FWD + 'uplinks = ["ar3"]\n', "forward[0].uplinks", "not an uplink"),
    ("forward proto", LAN + FWD.replace('"tcp"', '"icmp"'), "forward[0].proto", "not a protocol mmr forwards"),
    ("forward missing to", LAN + FWD.replace('to = "fd00:1::10"', ''), "forward[0].to", "is missing"),
    ("forward other port over IPv6", LAN + FWD + "to_port = 80\n", "forward[0].to_port",
     "an IPv6 forward keeps its port"),
    ("forward other port on an untranslated uplink",
     LAN.replace('device = "up2"', 'device = "up2"\nnat = "none"') + FWD4 + "to_port = 80\n", "forward[0].to_port",
     'uplink ar2 has nat = "none": only NAPT44 rewrites'),
    ("forward other port to a public host on nat auto",
     GOOD.replace('[engine]', '[engine]\nlan_prefixes = ["198.51.100.0/24"]')
     + FWD4.replace("192.168.1.10", "198.51.100.10") + "to_port = 80\n", "forward[0].to_port",
     "leaves the public address 198.51.100.10 untranslated"),
    ("forward too many through NAPT44", LAN + "".join(FWD4.replace("8080", str(9000 + k)) for k in range(33)),
     "forward", "count 66 times (once per translating uplink)"),
    ("forward one host port twice", LAN + FWD4 + "to_port = 80\n" + FWD4.replace("8080", "80"), "forward[1].to_port",
     "192.168.1.10's ports 80-80 overlap forward[0]'s 80-80"),
]


def test_the_edge_is_stateful_by_default(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert [u.edge for u in cfg.uplinks] == ["stateful", "stateful"]
    assert cfg.routed_prefixes == [] and cfg.edge_capacity == 65536
    cfg = load_config(write(tmp_path, GOOD.replace('device = "up2"', 'device = "up2"\nedge = "open"')))
    assert [u.edge for u in cfg.uplinks] == ["stateful", "open"]


@pytest.mark.parametrize("what,text,key,words", BAD, ids=[b[0] for b in BAD])
def test_every_mistake_is_one_sentence(tmp_path, what, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    msg = str(ei.value)
    assert msg.startswith(path)
    if key:
        assert f": {key}:" in msg
    assert words in msg
    assert "\n" not in msg and ";" in msg        # problem; fix


def test_npt_prefix_defaults_to_the_uplinks_own(tmp_path):
    """nat6 = "npt" without npt_prefix, or with "auto": the uplink's own prefix, chosen at
    run time (engine/translate.py); the dump says "auto" and loads again as it."""
    from engine.control import config_document

    for extra in ('nat6 = "npt"', 'nat6 = "npt"\nnpt_prefix = "auto"'):
        cfg = load_config(write(tmp_path, GOOD.replace('device = "up2"', 'device = "up2"\n' + extra)))
        assert cfg.uplinks[1].nat6 == "npt" and cfg.uplinks[1].npt_prefix is None
        assert cfg.uplinks[0].nat6 == "none"
        assert config_document(cfg)["uplink"][1]["npt_prefix"] == "auto"
    cfg = load_config(write(tmp_path, GOOD.replace('device = "up2"', 'device = "up2"\nnat6 = "npt"\n'
                                                   'npt_prefix = "2001:db8:a2:100::/64"')))
    assert str(cfg.uplinks[1].npt_prefix) == "2001:db8:a2:100::/64"


def test_nat6_masquerade_is_napt66(tmp_path):
    cfg = load_config(write(tmp_path, GOOD.replace('device = "up2"', 'device = "up2"\nnat6 = "masquerade"')))
    assert cfg.uplinks[1].nat6 == "masquerade" and cfg.uplinks[0].nat6 == "none"


def test_monitor_defaults_and_probe_targets(tmp_path):
    cfg = load_config(write(tmp_path, GOOD.replace('device = "up1"', 'device = "up1"\ngateway = "2001:db8:a1::1"')))
    m = cfg.monitor
    assert (m["probe_interval_ms"], m["down_after"], m["up_after"], m["failback"]) == (200.0, 3, 3, "stay")
    assert m["metrics_listen"] == "" and m["control_socket"] == "@mmr" and m["measure"] == []
    assert cfg.uplinks[0].probe_targets == ["2001:db8:a1::1"]      # the gateway by default
    assert cfg.uplinks[1].probe_targets == []                      # nothing to probe: links only
    assert cfg.uplinks[0].qdisc_bypass is True


def test_gateway_per_family(tmp_path):
    """gateway serves both families unless gateway4 / gateway6 say otherwise; "auto" (None)
    is the kernel's default route of that family; probes go to the static ones."""
    text = GOOD.replace('device = "up1"', 'device = "up1"\ngateway = "2001:db8:a1::1"\ngateway4 = "198.18.1.1"')
    text = text.replace('device = "up2"', 'device = "up2"\ngateway4 = "198.18.2.1"\ngateway6 = "auto"')
    a, b = load_config(write(tmp_path, text)).uplinks
    assert (a.gateway, a.gateway4, a.gateway6) == ("2001:db8:a1::1", "198.18.1.1", "2001:db8:a1::1")
    assert (b.gateway, b.gateway4, b.gateway6) == (None, "198.18.2.1", None)
    assert a.probe_targets == ["2001:db8:a1::1"] and b.probe_targets == ["198.18.2.1"]
    c = load_config(write(tmp_path, GOOD)).uplinks[0]
    assert (c.gateway4, c.gateway6) == (None, None)


def test_missing_file():
    with pytest.raises(ConfigError, match="no such file"):
        load_config("/nonexistent/policy.toml")


def test_cli_exit_code_2_without_traceback(tmp_path):
    path = write(tmp_path, GOOD.replace('qos = 1.0', 'loss = 7'))
    p = subprocess.run([sys.executable, "-m", "engine", "config", "--config", path, "--check"],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1 and "uplink[0].loss" in p.stderr


def test_cli_check_show_explain():
    ok = subprocess.run([sys.executable, "-m", "engine", "config", "--check"], capture_output=True, text=True)
    assert ok.returncode == 0 and "2 uplinks" in ok.stdout
    show = subprocess.run([sys.executable, "-m", "engine", "config", "--show"], capture_output=True, text=True)
    assert show.returncode == 0 and "ar1" in show.stdout and "qos-load-balancing" in show.stdout
    ex = subprocess.run([sys.executable, "-m", "engine", "config", "--explain", "--service", "video",
                         "--preference", "2"], capture_output=True, text=True)
    assert ex.returncode == 0, ex.stderr
    assert "winner: ar1" in ex.stdout


def test_explain_load_balancing_shows_the_weights(tmp_path):
    """Preference 3 has no single winner: --explain gives each uplink's share of new flows."""
    text = open(os.path.join(os.path.dirname(__file__), "..", "engine", "default.toml")).read()
    p = tmp_path / "w.toml"
    p.write_text(text.replace('name = "ar1"', 'name = "ar1"\nweight = 3', 1)
                 .replace('name = "ar2"', 'name = "ar2"\nweight = 1', 1))
    ex = subprocess.run([sys.executable, "-m", "engine", "config", "--explain", "--preference", "3", "--config",
                         str(p)], capture_output=True, text=True)
    assert ex.returncode == 0, ex.stderr
    assert "ar1 3 (75 %), ar2 1 (25 %)" in ex.stdout and "winner" not in ex.stdout


def test_forwards(tmp_path):
    text = (LAN.replace('device = "up2"', 'device = "up2"\nnat = "none"') + FWD
            + FWD.replace("8080", '"9000-9009"').replace('"tcp"', '"udp"') + 'uplinks = ["ar2"]\n'
            + FWD.replace("fd00:1::10", "192.168.1.10").replace('"tcp"', '"udp"') + 'uplinks = ["ar2"]\n')
    f = load_config(write(tmp_path, text)).forwards
    assert [(x.proto, x.ports, str(x.to), x.to_port, x.uplinks) for x in f] == [
        (6, (8080, 8080), "fd00:1::10", 8080, (0, 1)), (17, (9000, 9009), "fd00:1::10", 9000, (1,)),
        (17, (8080, 8080), "192.168.1.10", 8080, (1,))]


def test_a_forward_to_another_port_through_napt44(tmp_path):
    """to_port on IPv4 to a host the uplinks translate (nat "auto" and a private host, or
    "masquerade"); another host's same port is another forward."""
    text = (LAN.replace('device = "up2"', 'device = "up2"\nnat = "masquerade"') + FWD4 + "to_port = 80\n"
            + FWD4.replace("8080", '"2222-2223"').replace("192.168.1.10", "192.168.1.11") + "to_port = 22\n"
            + FWD4.replace("8080", "2224") + "to_port = 22\n")
    f = load_config(write(tmp_path, text)).forwards
    assert [(x.proto, x.ports, str(x.to), x.to_port, x.uplinks) for x in f] == [
        (6, (8080, 8080), "192.168.1.10", 80, (0, 1)), (6, (2222, 2223), "192.168.1.11", 22, (0, 1)),
        (6, (2224, 2224), "192.168.1.10", 22, (0, 1))]
