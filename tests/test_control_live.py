"""The control socket of a running router, attacked: malformed requests, a slow client, idle
clients, a client that never reads, and a burst of mutated requests.  None may stop, freeze
or fool the router: pings across it keep crossing (none lost), and `mmr status` answers
afterwards.  Then its users: a monitoring agent in the read group (real unprivileged `mmr`
processes), the operator's `mmr uplink` override, `mmr status --config`, and tables with a
long uplink name."""
import grp
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading

import pytest

from engine.config import default_config_path, load_config
from engine.control import config_document
from engine.testbed import CN_ADDR
from netlab import ROOT, in_ns, make_testbed, peer, running_router

pytestmark = pytest.mark.privileged
BAD = [b"[]", b'"status"', b"1", b"null", b'{"cmd": "flows", "limit": 1e999}', b"[" * 60000,
       b'{"cmd": "reboot"}', b"\xff\xfe\xfd", b'{"cmd": "flows", "uplink": {"a": 1}}',
       b'{"cmd": "uplink"}', b'{"cmd": "uplink", "name": "ar1", "mode": "sideways"}',
       b'{"cmd": "uplink", "name": ["ar1"], "mode": "down"}', b'{"cmd": "uplink", "name": "ar1", "mode": null}',
       b'{"cmd": "uplink", "name": "nope", "mode": "down"}', b'{"cmd": "uplink", "name": "ar1", "mode": "down", "x": 1}',
       b'{"cmd": "config", "path": "/etc/shadow"}']

CLIENT = r"""
import socket, sys, json, time, random
mode = sys.argv[1]
def conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("\0mmr")
    return s
if mode == "one":
    s = conn(); s.sendall(bytes.fromhex(sys.argv[2]) + b"\n"); s.settimeout(5)
    data = b""
    while True:
        c = s.recv(65536)
        if not c: break
        data += c
    print(data.decode(errors="replace").strip())
elif mode == "slow":                              # a byte every 0.5 s
    s = conn(); sent = 0
    try:
        for b in b'{"cmd": "status"}':
            s.send(bytes([b])); sent += 1; time.sleep(0.5)
    except OSError:
        pass
    print(json.dumps({"sent": sent}))
elif mode == "idle":                              # connect, say nothing
    socks = [conn() for _ in range(int(sys.argv[2]))]
    time.sleep(float(sys.argv[3]))
    print("done")
elif mode == "deaf":                              # ask for a lot, never read
    s = conn(); s.sendall(b'{"cmd": "flows", "limit": 10000}\n'); time.sleep(float(sys.argv[2])); print("done")
elif mode == "fuzz":                              # mutated requests, one connection each
    sys.path.insert(0, sys.argv[4])
    from mutate import mutate
    rng = random.Random(int(sys.argv[3])); seeds = [b'{"cmd": "status"}', b'{"cmd": "flows", "limit": 5, "uplink": "ar1"}',
             b'{"cmd": "ping"}', b'{"cmd": "reload"}', b'{"cmd": "config"}',
             b'{"cmd": "uplink", "name": "ar1", "mode": "auto"}']
    n = answered = 0; end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        s = conn(); s.settimeout(3); n += 1
        try:
            s.sendall(mutate(rng.choice(seeds), rng) + b"\n")
            if s.recv(65536): answered += 1
        except OSError:
            pass
        s.close()
    print(json.dumps({"sent": n, "answered": answered}))
"""


@pytest.fixture(scope="module")
def testbed():
    with make_testbed("s") as tb:
        yield tb


def client(tb, *args, timeout=60):
    return subprocess.run(in_ns(tb, "mmr", sys.executable, "-c", CLIENT, *map(str, args)), capture_output=True,
                          text=True, timeout=timeout)


def status(tb):
    p = subprocess.run(in_ns(tb, "mmr", sys.executable, "-m", "engine", "status", "--json"), capture_output=True,
                       text=True, cwd=ROOT, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_malformed_requests_get_an_error_answer(testbed):
    with running_router(testbed) as (p, _):
        for raw in BAD:
            r = client(testbed, "one", raw.hex())
            ans = json.loads(r.stdout)
            assert ans["ok"] is False and ans["error"], (raw[:30], ans)
        assert p.poll() is None
        st = status(testbed)
        assert st["counters"]["internal_errors"] == 0
        assert {u["admin"] for u in st["uplinks"]} == {"auto"}      # no bad request changed a thing


def test_slow_idle_and_deaf_clients_cost_no_ping(testbed):
    with running_router(testbed) as (p, _):
        ping = subprocess.Popen(in_ns(testbed, "mn", "ping", "-6", "-n", "-i", "0.05", "-c", "120", "-W", "2",
                                      CN_ADDR), stdout=subprocess.PIPE, text=True)
        threads = [threading.Thread(target=client, args=(testbed, *a)) for a in
                   (("slow",), ("idle", 10, 4), ("deaf", 4), ("idle", 30, 3))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out, _ = ping.communicate(timeout=30)
        st = status(testbed)
        assert p.poll() is None
    sent = int(re.search(r"(\d+) packets transmitted", out).group(1))
    assert len(set(re.findall(r"icmp_seq=(\d+)", out))) == sent, out[-400:]
    assert st["uplinks"] and st["counters"]["internal_errors"] == 0


def test_mutated_requests(testbed):
    with running_router(testbed) as (p, _):
        r = client(testbed, "fuzz", 8, random.randrange(10**6), os.path.join(ROOT, "tests", "fuzz"))
        res = json.loads(r.stdout)
        st = status(testbed)
        assert p.poll() is None
    print(f"control requests fuzzed: {res}")
    assert res["sent"] > 100 and res["answered"] >= 0.9 * res["sent"], res
    assert st["counters"]["internal_errors"] == 0
    # the only valid uplink request the mutations can make sets "auto" (no mutation spells up or down)
    assert {u["admin"] for u in st["uplinks"]} == {"auto"}


# ------------------------------------------------------------------------------ its users
LONG = "ar1-wlan-backhaul-to-the-second-floor"
SYSTEM_PYTHON = "/usr/bin/python3"
READ_GROUP = "users"                     # every Debian system has it (gid 100); nobody is no member
# `mmr` as another user: the test's interpreter lives under /root, which nobody may not read,
# so the system python3 runs mmr's own CLI (engine.cli.main) from the source tree, with the
# control commands registered (the others need numpy, which the system python3 lacks).
NOBODY_MMR = """
import argparse, sys
sys.path.insert(0, sys.argv[1])
import engine.cli as cli
from engine.commands import status, uplink
def parser():
    p = argparse.ArgumentParser(prog="mmr")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    status.register(sub)
    uplink.register(sub)
    return p
cli.build_parser = parser
sys.exit(cli.main(sys.argv[2:]))
"""


def mmr_as(tb, ids, *args):
    """``mmr ARGS`` in the MMR namespace as the user setpriv IDS make."""
    return subprocess.run(in_ns(tb, "mmr", "setpriv", *ids, SYSTEM_PYTHON, "-c", NOBODY_MMR, ROOT, *args),
                          capture_output=True, text=True, timeout=30, cwd="/")


def mmr_root(tb, *args):
    return subprocess.run(in_ns(tb, "mmr", sys.executable, "-m", "engine", *args), capture_output=True,
                          text=True, cwd=ROOT, timeout=30)


def columns(head: str) -> dict[str, int]:
    return {m.group(): m.start() for m in re.finditer(r"(?<!\S)\S+", head)}


@pytest.mark.skipif(os.environ.get("MMR_REQUIRE_PRIVILEGED") != "1" and (not os.path.exists(SYSTEM_PYTHON) or not shutil.which("setpriv")),
                    reason="needs the system python3 and setpriv to act as another user (under CI: fails instead)")
def test_read_group_uplink_override_running_config_and_long_names(testbed, tmp_path):
    gid = grp.getgrnam(READ_GROUP).gr_gid
    text = open(default_config_path()).read().replace('name = "ar1"', f'name = "{LONG}"')
    policy = tmp_path / "policy.toml"
    policy.write_text(text + f'\n[monitor]\ncontrol_read_group = "{READ_GROUP}"\n')
    reader = ("--reuid=65534", "--regid=65534", f"--groups={gid}")          # a supplementary member
    reader_primary = ("--reuid=65534", f"--regid={gid}", "--clear-groups")   # its primary group
    stranger = ("--reuid=65534", "--regid=65534", "--init-groups")          # nobody's own groups: none
    with running_router(testbed, "--config", str(policy)) as (p, _):
        snd = peer(testbed, "mn", "udp-send", CN_ADDR, 9400, 3, 3, 2)       # video, QoS: via LONG (AR1)
        assert snd.returncode == 0, snd.stderr

        # the monitoring agent reads: status (text, JSON), flows, the running policy
        for ids in (reader, reader_primary):
            js = mmr_as(testbed, ids, "status", "--json")
            assert js.returncode == 0, js.stderr
            ups = {u["name"]: u for u in json.loads(js.stdout)["uplinks"]}
            assert set(ups) == {LONG, "ar2"} and ups[LONG]["flows"] >= 1
        human = mmr_as(testbed, reader, "status")
        assert human.returncode == 0, human.stderr
        head, *rows = human.stdout.splitlines()[1:4]
        col = columns(head)
        assert rows[0].startswith(LONG + "  ") and rows[1].startswith("ar2 ")
        for row, dev in zip(rows, ("up1", "up2")):                          # sized to the long name
            assert row[col["device"]:].split()[0] == dev and row[col["admin"]:].split()[0] == "auto"
        fl = mmr_as(testbed, reader, "flows")
        assert fl.returncode == 0, fl.stderr
        fhead, *frows = fl.stdout.splitlines()
        mine = [r for r in frows if LONG in r]
        assert mine and all(r.index(LONG) == columns(fhead)["uplink"] for r in mine)
        conf = mmr_as(testbed, reader, "status", "--config")
        assert conf.returncode == 0, conf.stderr
        (tmp_path / "running.toml").write_text(conf.stdout)
        assert config_document(load_config(str(tmp_path / "running.toml"))) == config_document(load_config(str(policy)))

        # ... and may change nothing
        for args in (("reload",), ("uplink", LONG, "down")):
            r = mmr_as(testbed, reader, *args)
            assert r.returncode == 2 and "read-only" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        # anyone else gets nothing
        r = mmr_as(testbed, stranger, "status", "--json")
        assert r.returncode == 2 and not r.stdout
        assert f"only root, or the group {READ_GROUP} for reading" in r.stderr and r.stderr.count("\n") == 1
        st = status(testbed)
        assert st["reloads"] == 0 and {u["admin"] for u in st["uplinks"]} == {"auto"}

        # the operator: mistakes are one sentence, exit 2
        for args, said in ((("uplink", "nope", "down"), f"no uplink named 'nope'; the uplinks are {LONG}, ar2"),
                           (("uplink", LONG, "sideways"), "'sideways' is not a mode")):
            r = mmr_root(testbed, *args)
            assert r.returncode == 2 and said in r.stderr and r.stderr.count("\n") == 1, r.stderr
        # down: out of use, its flows moved; auto: the monitor decides again
        r = mmr_root(testbed, "uplink", LONG, "down")
        assert r.returncode == 0 and r.stdout.startswith(f"uplink {LONG} is administratively down"), r.stderr
        ups = {u["name"]: u for u in status(testbed)["uplinks"]}
        assert ups[LONG]["admin"] == "down" and not ups[LONG]["usable"] and ups[LONG]["flows"] == 0
        assert ups["ar2"]["flows"] >= 1 and ups["ar2"]["admin"] == "auto"
        human = mmr_root(testbed, "status").stdout.splitlines()
        col = columns(human[1])
        assert human[2][col["admin"]:].split()[:2] == ["down", "NO"]
        assert mmr_root(testbed, "uplink", LONG, "auto").returncode == 0
        ups = {u["name"]: u for u in status(testbed)["uplinks"]}
        assert ups[LONG]["admin"] == "auto" and ups[LONG]["usable"]
        assert p.poll() is None and status(testbed)["counters"]["internal_errors"] == 0
