"""The control socket of a running router, attacked: malformed requests, a slow client, idle
clients, a client that never reads, and a burst of mutated requests.  None may stop, freeze
or fool the router: pings across it keep crossing (none lost), and `mmr status` answers
afterwards."""
import json
import os
import random
import re
import subprocess
import sys
import threading

import pytest

from engine.testbed import CN_ADDR
from netlab import ROOT, in_ns, make_testbed, running_router

pytestmark = pytest.mark.privileged
BAD = [b"[]", b'"status"', b"1", b"null", b'{"cmd": "flows", "limit": 1e999}', b"[" * 60000,
       b'{"cmd": "reboot"}', b"\xff\xfe\xfd", b'{"cmd": "flows", "uplink": {"a": 1}}']

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
             b'{"cmd": "ping"}', b'{"cmd": "reload"}']
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
        assert status(testbed)["counters"]["internal_errors"] == 0


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
