"""The control commands' client side without a router: tables sized to their content (long
uplink names, wide characters, hostile names), the running policy printed as TOML that loads
back to the same policy, `mmr uplink`'s errors (one sentence, exit 2), the engine's handler
for the new requests against a stub connection manager, and the --help texts."""
import json
import re
import types

import pytest

from engine import cli
from engine.commands import status as st
from engine.config import load_config
from engine.control import config_document

LONG = "wlan-backhaul-to-the-second-floor-access-point"


# ------------------------------------------------------------------------------ table()
def test_table_sizes_every_column_to_its_widest_cell():
    lines = st.table([("uplink", "<"), ("flows", ">"), ("reason", "<")],
                     [["ar1", 3, ""], [LONG, 12345, "3 probes lost"]])
    assert lines[0] == f"{'uplink':<{len(LONG)}}  flows  reason"
    assert lines[1] == f"{'ar1':<{len(LONG)}}      3"    # no trailing blanks
    assert lines[2] == f"{LONG}  12345  3 probes lost"


def test_table_heading_wider_than_cells_and_no_rows():
    assert st.table([("a-long-heading", "<"), ("n", ">")], [["x", 1]]) == ["a-long-heading  n", "x               1"]
    assert st.table([("uplink", "<"), ("flows", ">")], []) == ["uplink  flows"]


def test_table_none_control_characters_and_wide_characters():
    lines = st.table([("name", "<"), ("x", ">")], [["evil\nname\x1b[31m", None], ["無線", 1]])
    assert len(lines) == 3                                  # a newline in a name makes no extra row
    assert "\x1b" not in "".join(lines) and "\\n" in lines[1] and "\\x1b" in lines[1]
    assert lines[1].endswith(" -")
    # 無線 takes four terminal columns: the x column stays aligned
    assert st.width(lines[2]) == st.width(lines[1]) == st.width(lines[0])


def answer_status(names):
    up = {"device": "up1", "usable": True, "link": "up", "probes": "ok", "rtt_ms": 0.123, "probe_loss": 0.0,
          "flows": 2, "reason": "", "admin": "auto"}
    return {"ok": True, "mode": "run", "policy": "/etc/mmr/policy.toml", "uptime_s": 12.0, "flows": 2, "reloads": 0,
            "uplinks": [dict(up, name=n, device=f"dev{i}") for i, n in enumerate(names)],
            "failovers": [], "counters": {"rx_inside": 5}, "drops": {"bad": 0}}


def run_cli(monkeypatch, capsys, argv, answer):
    sent = []

    def fake_ask(addr, req):
        sent.append(req)
        return answer(req) if callable(answer) else answer
    monkeypatch.setattr("engine.control.ask", fake_ask)
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err, sent


def test_status_table_with_long_uplink_names(monkeypatch, capsys):
    ans = answer_status(["ar1", LONG])
    ans["uplinks"][1].update(usable=False, admin="down", reason="administratively down", rtt_ms=None, probe_loss=None)
    rc, out, _, sent = run_cli(monkeypatch, capsys, ["status"], ans)
    assert rc == 0 and sent == [{"cmd": "status"}]
    lines = out.splitlines()
    head, r1, r2 = lines[1], lines[2], lines[3]
    assert head.split() == ["uplink", "device", "admin", "usable", "link", "probes", "rtt", "ms", "loss", "flows",
                            "reason"]
    assert r2.startswith(LONG + "  dev1") and "down" in r2 and " NO " in r2
    starts = {m.group(): m.start() for m in re.finditer(r"(?<!\S)\S+", head)}
    for col, v1, v2 in (("device", "dev0", "dev1"), ("admin", "auto", "down"), ("usable", "yes", "NO"),
                        ("link", "up", "up"), ("probes", "ok", "ok"), ("reason", None, "administratively")):
        if v1:                                             # left-aligned columns start under their heading
            assert r1[starts[col]:].split()[0] == v1
        assert r2[starts[col]:].split()[0] == v2 and r2[starts[col] - 1] == " "
    assert head.index("flows") + len("flows") == r1.index("      2") + 7 == r2.index("      2") + 7


def test_flows_table_with_long_names(monkeypatch, capsys):
    flows = [{"src": "2001:db8:1::10", "dst": "2001:db8:ffff:ffff:ffff:ffff:ffff:1234", "proto": 17, "sport": 40000,
              "dport": 5060, "service": "voip", "preference": 2, "uplink": LONG, "packets": 3, "bytes": 360},
             {"src": "192.0.2.5", "dst": "198.51.100.1", "proto": 6, "sport": 1, "dport": 22, "service": "control",
              "preference": 0, "uplink": None, "packets": 1234567, "bytes": 9876543210}]
    rc, out, _, sent = run_cli(monkeypatch, capsys, ["flows", "--uplink", LONG], {"ok": True, "total": 2, "flows": flows})
    assert rc == 0 and sent == [{"cmd": "flows", "limit": 1000, "uplink": LONG}]
    head, r1, r2, tail = out.splitlines()
    assert tail == "2 of 2 flows"
    assert r1.index(LONG) == head.index("uplink") == r2.index("-", head.index("uplink"))
    assert head.index("dst") == r1.index("2001:db8:ffff") == r2.index("198.51.100.1")
    assert len(head) == len(r1.rstrip()) == len(r2.rstrip())    # right-aligned last column: bytes
    assert r2.endswith("9876543210") and r1.endswith("       360")


# ------------------------------------------------------------------------------ status --config
POLICY = """
[engine]
lan = "lan0"
lan_prefixes = ["2001:db8:1::/64", "10.0.0.0/8"]
routed_prefixes = ["2001:db8:1::/120"]
default_preference = 2

[[uplink]]
name = "%s"
device = "up1"
gateway_mac = "02:00:00:00:00:01"
bandwidth_mbps = 100
qos = 0.5
weight = 3
probe_targets = ["2001:db8:ff::1", "2001:db8:fe::1"]
reliability = 2
probe_interval_ms = 500.0
down_after = 4
degraded_loss = 0.2

[[uplink]]
name = "odd \\"name\\" \\u00e9\\t"
device = "up2"
gateway = "fe80::1"
gateway4 = "198.18.2.1"
dns = ["2001:db8:a2::53", "198.18.2.53"]
metric = 3
usable = false
probe_targets = []
strip_option = true
edge = "open"

[[forward]]
proto = "udp"
port = "6881-6889"
to = "10.0.0.5"
uplinks = ["%s"]

[[forward]]
proto = "tcp"
port = 443
to = "2001:db8:1::5"

[classes]
packet_size = 0.7
weight = { data = 1, control = 2, voip = 3, video = 4 }

[policy.7]
network = ["cost", "power"]
flow = ["weight", 0.25]

[[rule]]
dst = "192.0.2.0/24"
uplink = "%s"

[[rule]]
proto = 132
sport = "100-200"
src = "2001:db8:1::/80"
dscp = "EF"
service = "video"

[[trust]]
src = "2001:db8:1:0:99::/80"
services = ["data", "control"]
preferences = [0, 1, 3, "4-100", 7]

[[trust]]
src = "2001:db8:1::/64"
services = []

[select]
sticky_s = 600

[monitor]
measure = ["loss"]
failback = "return"
control_socket = "/run/mmr/ctl.sock"
control_read_group = "users"
""" % (LONG, LONG, LONG)


@pytest.mark.parametrize("text", [None, "default-host.toml", POLICY], ids=["default", "host", "everything"])
def test_running_policy_as_toml_loads_back_to_the_same_policy(tmp_path, text):
    if text is None or text.endswith(".toml"):
        cfg = load_config(None, default=text or "default.toml")
    else:
        (tmp_path / "p.toml").write_text(text)
        cfg = load_config(str(tmp_path / "p.toml"))
    doc = config_document(cfg)
    json.dumps(doc)                                         # what the socket sends
    (tmp_path / "running.toml").write_text(st.toml_text(doc))
    again = load_config(str(tmp_path / "running.toml"))
    assert config_document(again) == doc
    assert [vars(u) for u in again.uplinks] == [vars(u) for u in cfg.uplinks]
    assert [vars(r) for r in again.rules] == [vars(r) for r in cfg.rules]
    assert again.policies == cfg.policies and again.classes == cfg.classes and again.monitor == cfg.monitor
    assert again.select == cfg.select
    assert again.trust == cfg.trust
    assert again.forwards == cfg.forwards and again.routed_prefixes == cfg.routed_prefixes


def test_status_config_prints_toml_or_json(monkeypatch, capsys):
    doc = config_document(load_config(None))
    ans = {"ok": True, "policy": "/etc/mmr/p\nolicy.toml", "mode": "run", "reloads": 2, "config": doc}
    rc, out, _, sent = run_cli(monkeypatch, capsys, ["status", "--config"], ans)
    assert rc == 0 and sent == [{"cmd": "config"}]
    assert out.startswith("# the policy a running mmr run uses now") and "reloaded 2 times" in out
    assert all(line.startswith("#") for line in out.splitlines()[:2])   # a newline in the path stays a comment
    import tomllib
    assert tomllib.loads(out)["uplink"][0]["name"] == "ar1"
    rc, out, _, _ = run_cli(monkeypatch, capsys, ["status", "--config", "--json"], ans)
    assert rc == 0 and json.loads(out)["config"] == json.loads(json.dumps(doc))


def test_toml_strings_keep_every_character():
    import tomllib
    for s in ['a"b\\c', "tab\there", "\x7f\x00\x1f", "é無", "line\nbreak"]:
        assert tomllib.loads(f"k = {st.toml_string(s)}")["k"] == s


# ------------------------------------------------------------------------------ mmr uplink
@pytest.mark.parametrize("argv,sentence", [
    (["uplink", "ar1", "sideways"], "'sideways' is not a mode; write down, up or auto"),
    (["uplink", "ar1", "DOWN"], "'DOWN' is not a mode; write down, up or auto"),
    (["uplink", "x" * 65, "down"], "is not an uplink name"),
])
def test_uplink_bad_arguments_one_sentence_exit_2(monkeypatch, capsys, argv, sentence):
    rc, out, err, sent = run_cli(monkeypatch, capsys, argv, {"ok": True, "message": "never asked"})
    assert rc == 2 and not sent and not out
    assert err.startswith("mmr uplink: ") and sentence in err and err.count("\n") == 1


def test_uplink_sends_the_request_and_relays_refusals(monkeypatch, capsys):
    rc, out, _, sent = run_cli(monkeypatch, capsys, ["uplink", "ar2", "down"],
                               {"ok": True, "message": "uplink ar2 is administratively down"})
    assert rc == 0 and sent == [{"cmd": "uplink", "name": "ar2", "mode": "down"}]
    assert out == "uplink ar2 is administratively down\n"
    for error in ("no uplink named 'nope'; the uplinks are ar1, ar2",
                  "the control socket is read-only for the group users: uplink needs root"):
        rc, out, err, _ = run_cli(monkeypatch, capsys, ["uplink", "nope", "auto"], {"ok": False, "error": error})
        assert rc == 2 and err == f"mmr uplink: {error}\n" and not out


# ------------------------------------------------------------------------------ the engine's handler
class StubConn:
    """Stands in for ConnectionManager.set_admin (engine/connmgr.py) in this unit test only."""

    def __init__(self, names):
        self.names, self.calls = names, []

    def set_admin(self, name, mode):
        if mode not in ("up", "down", "auto"):
            raise ValueError(f"{mode!r} is not an administrative mode; use up, down or auto")
        self.calls.append((name, mode))
        return {"name": name, "usable": mode != "down", "reason": "admin down" if mode == "down" else "",
                "admin": mode}

    def status(self):
        return [{"name": n} for n in self.names]


def engine_stub():
    from engine import datapath

    cfg = load_config(None)
    logged = []
    dp = types.SimpleNamespace(cfg=cfg, conn=StubConn([u.name for u in cfg.uplinks]), mode="run",
                               reloads=0, log=logged.append, started=0.0)
    dp.handle = lambda req: datapath.Datapath.handle_control(dp, req)
    return dp, logged


def test_handler_uplink_override_and_config():
    dp, _ = engine_stub()
    ans = dp.handle({"cmd": "uplink", "name": "ar2", "mode": "down"})
    assert ans["ok"] and ans["uplink"]["admin"] == "down" and "\n" not in ans["message"]
    assert ans["message"].startswith("uplink ar2 is administratively down")
    assert dp.conn.calls == [("ar2", "down")]
    bad = dp.handle({"cmd": "uplink", "name": "nope", "mode": "up"})
    assert bad == {"ok": False, "error": "no uplink named 'nope'; the uplinks are ar1, ar2"}
    assert dp.conn.calls == [("ar2", "down")]             # an unknown name changes nothing
    up = dp.handle({"cmd": "uplink", "name": "ar1", "mode": "up"})
    assert up["ok"] and "now usable" in up["message"]
    assert "now usable" in dp.handle({"cmd": "uplink", "name": "ar2", "mode": "auto"})["message"]
    wrong = dp.handle({"cmd": "uplink", "name": "ar2", "mode": "sideways"})   # past validate: still a sentence
    assert wrong == {"ok": False, "error": "'sideways' is not an administrative mode; use up, down or auto"}
    conf = dp.handle({"cmd": "config"})
    assert conf["ok"] and conf["config"] == config_document(dp.cfg) and conf["policy"] == dp.cfg.path


# ------------------------------------------------------------------------------ --help
@pytest.mark.parametrize("cmd", ["status", "flows", "reload", "uplink"])
def test_help_has_examples_access_and_exit_status(capsys, cmd):
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "examples:" in out and "exit status: 0" in out and "root" in out.lower()
    assert all(len(line) <= 100 for line in out.splitlines())


def test_status_shows_a_degraded_uplink_and_why(monkeypatch, capsys):
    ans = answer_status(["ar1", "ar2"])
    ans["uplinks"][0].update(degraded=True, degraded_reason="probe loss 35% > 20%", reason="")
    rc, out, _, _ = run_cli(monkeypatch, capsys, ["status"], ans)
    row = out.splitlines()[2]
    assert rc == 0 and "yes, degraded" in row and row.endswith("probe loss 35% > 20%")
    assert "degraded" not in out.splitlines()[3]


def test_status_shows_an_absent_device(monkeypatch, capsys):
    """An uplink whose device does not exist now (waited for, or gone until it is back)."""
    ans = answer_status(["ar1", "ar2"])
    ans["uplinks"][0].update(ifindex=None, usable=False, link="down", reason="device removed")
    ans["uplinks"][1].update(ifindex=7)
    rc, out, _, _ = run_cli(monkeypatch, capsys, ["status"], ans)
    rows = out.splitlines()
    assert rc == 0 and "dev0 (absent)" in rows[2] and "device removed" in rows[2]
    assert "absent" not in rows[3]


def test_status_shows_the_lan_device_and_whether_it_is_there(monkeypatch, capsys):
    """mmr run's LAN device with its index, or absent (waited for, or gone until it is back);
    mmr host's answer has no LAN and prints none."""
    ans = answer_status(["ar1"])
    rc, out, _, _ = run_cli(monkeypatch, capsys, ["status"], ans)
    assert rc == 0 and "LAN:" not in out
    ans["lan"] = {"device": "lan0", "ifindex": 12}
    rc, out, _, _ = run_cli(monkeypatch, capsys, ["status"], ans)
    assert rc == 0 and "LAN: lan0 (index 12)" in out.splitlines()
    ans["lan"] = {"device": "evil\x1b[31m", "ifindex": None}
    rc, out, _, _ = run_cli(monkeypatch, capsys, ["status"], ans)
    line = [x for x in out.splitlines() if x.startswith("LAN:")]
    assert rc == 0 and len(line) == 1 and "(absent" in line[0] and "\x1b" not in out
