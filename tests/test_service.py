"""mmr as a service: the systemd units in contrib/systemd, the sd_notify protocol
(READY/STATUS/WATCHDOG/STOPPING) spoken to a socket of the test's own, the log's levels (and
journald priorities), and mmr run / mmr host as a user without root that holds only
CAP_NET_RAW + CAP_NET_ADMIN, as the units run them."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from engine.log import Log
from engine.testbed import CN_ADDR, HOST, PEER_ADDR
from netlab import ROOT, in_ns, make_testbed
from privdrop import as_user

UNITS = os.path.join(ROOT, "contrib", "systemd")


# ---------------------------------------------------------------------- units
@pytest.mark.parametrize("unit, command", [("mmr.service", "run"), ("mmr-host.service", "host")])
def test_unit_file_is_valid_and_runs_mmr_without_root(unit, command, tmp_path):
    """systemd-analyze verify accepts the unit (with ExecStart pointed at this mmr); it is a
    notify service with a watchdog, runs mmr COMMAND on /etc/mmr/mmr.toml, without root, with
    exactly the two capabilities (ambient, so mmr's nft child has them)."""
    text = open(os.path.join(UNITS, unit)).read()
    keys = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert keys["Type"] == "notify" and int(keys["WatchdogSec"]) > 0
    assert keys["ExecStart"] == f"/opt/mmr/bin/mmr {command} --config /etc/mmr/mmr.toml"
    assert keys["DynamicUser"] == "yes" and "User" not in keys
    assert set(keys["AmbientCapabilities"].split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert set(keys["CapabilityBoundingSet"].split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    mmr = shutil.which("mmr") or shutil.which("mmr", path=os.path.dirname(sys.executable))
    assert mmr, "the mmr entry point is not installed"
    (tmp_path / unit).write_text(text.replace("/opt/mmr/bin/mmr", mmr))
    p = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)], capture_output=True, text=True)
    assert p.returncode == 0 and unit not in p.stdout + p.stderr, p.stdout + p.stderr


def test_systemd_analyze_catches_a_broken_unit(tmp_path):
    """The check above can fail: a misspelt key is reported."""
    text = open(os.path.join(UNITS, "mmr.service")).read().replace("WatchdogSec", "WatchdgSec")
    (tmp_path / "bad.service").write_text(text.replace("/opt/mmr/bin/mmr", sys.executable))
    p = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "bad.service")], capture_output=True, text=True)
    assert "WatchdgSec" in p.stdout + p.stderr


# ---------------------------------------------------------------------- the log
def test_log_levels_and_threshold():
    r, w = os.pipe()
    with os.fdopen(w, "w") as out:
        log = Log(out, level="warning")
        log("an info line")
        log.warning("a warning")
        log.error("an error")
        log.debug("a debug line")
        log.close()
    lines = os.read(r, 65536).decode().splitlines()
    os.close(r)
    assert lines == ["mmr: warning: a warning", "mmr: error: an error"]


def test_log_speaks_journald_priorities_when_stderr_is_the_journal(monkeypatch):
    """$JOURNAL_STREAM names stderr's socket (device:inode): each line carries its syslog
    priority, so journald files it at that level."""
    a, b = socket.socketpair()
    st = os.fstat(a.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    out = a.makefile("w")
    log = Log(out, name="mmr host")
    log("ready")
    log.warning("uplink i2 is down at start")
    log.close()
    out.close()
    a.close()
    got = b.recv(65536).decode().splitlines()
    assert got == ["<6>mmr host: ready", "<4>mmr host: warning: uplink i2 is down at start"]
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")       # another stream: plain lines
    r, w = os.pipe()
    with os.fdopen(w, "w") as f:
        lg = Log(f)
        lg("plain")
        lg.close()
    assert os.read(r, 100).decode() == "mmr: plain\n"


def test_a_stalled_reader_never_blocks_the_logger():
    """stderr nobody reads (a full pipe): lines are dropped and counted, calls return at once."""
    r, w = os.pipe()
    os.set_blocking(w, True)
    out = os.fdopen(w, "w")
    log = Log(out, capacity=10)
    t = time.perf_counter()
    for i in range(20000):
        log(f"line {i} " + "x" * 200)
    assert time.perf_counter() - t < 5.0
    assert log.dropped > 0
    os.close(r)
    log.close(timeout=0.5)


# ---------------------------------------------------------------------- live
@pytest.fixture(scope="module")
def testbed():
    with make_testbed("s") as tb:
        yield tb


def _stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        return p.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.communicate()


@pytest.mark.privileged
def test_sd_notify_ready_status_watchdog_stopping(testbed, tmp_path):
    """Under a notify socket with WATCHDOG_USEC=200 ms: READY=1 with the ready line as STATUS,
    watchdog pings at half the interval from the forwarding loop, STOPPING=1 at SIGTERM."""
    path = str(tmp_path / "notify")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(0.2)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="200000")
    p = subprocess.Popen(in_ns(testbed, "mmr", sys.executable, "-m", "engine", "run", "--stats-interval", "0.5"),
                         cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    got, t_ready = [], None
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                msg = srv.recv(4096).decode()
            except socket.timeout:
                assert p.poll() is None, p.stderr.read()
                continue
            got.append((time.monotonic(), msg))
            if "READY=1" in msg and t_ready is None:
                t_ready = time.monotonic()
            if t_ready is not None and time.monotonic() - t_ready > 1.5:
                break
        t_stop = time.monotonic()       # what arrives from here on is read after mmr exited
        _stop(p)
        end = time.monotonic() + 5
        while time.monotonic() < end and not any("STOPPING=1" in m for _, m in got):
            try:
                got.append((time.monotonic(), srv.recv(4096).decode()))
            except socket.timeout:
                pass
    finally:
        if p.poll() is None:
            _stop(p)
        srv.close()
    msgs = [m for _, m in got]
    ready = [m for m in msgs if "READY=1" in m]
    assert len(ready) == 1 and "STATUS=forwarding lan0" in ready[0], msgs
    dogs = [t for t, m in got if m == "WATCHDOG=1" and t_ready <= t < t_stop]
    assert len(dogs) >= 8, msgs                      # 1.5 s at one per 0.1 s
    assert max(b - a for a, b in zip(dogs, dogs[1:])) < 0.35, "; ".join(f"{t - t_ready:.3f} {m[:20]!r}" for t, m in got)
    assert any(m.startswith("STATUS=rx_inside=") for m in msgs)      # the summary line
    assert any("STOPPING=1" in m for m in msgs) and p.returncode == 0


@pytest.mark.privileged
def test_run_as_nobody_with_two_capabilities_forwards(testbed, tmp_path):
    """uid 65534, no groups, CAP_NET_RAW + CAP_NET_ADMIN ambient (what the unit grants): mmr
    run takes over, forwards MN's pings to CN, and hands back at SIGTERM."""
    p = start_as_nobody(testbed.ns("mmr"), "run", "forwarding lan0", tmp_path)
    try:
        out = testbed.run("mn", "ping", "-6", "-c", "5", "-i", "0.1", "-W", "2", CN_ADDR, check=False)
        assert out is not None and " 0% packet loss" in out, out
        uid = open(f"/proc/{p.pid}/status").read().split("Uid:")[1].split()[:2]
    finally:
        _, err = _stop(p)
    assert p.returncode == 0, err
    last = err.strip().splitlines()[-1]
    carried = sum(int(x) for x in re.findall(r"up_ar\d=(\d+)", last))
    assert carried >= 5, last                        # mmr, not the kernel, carried the pings
    assert "inet mmr" not in tables_left(testbed)
    assert uid == ["65534", "65534"]                 # real and effective uid while it forwarded


def start_as_nobody(ns, command, ready, tmp_path, tun=False):
    """mmr COMMAND as uid 65534 with the unit's two capabilities; returns once it is ready."""
    argv = as_user(ns, [sys.executable, "-m", "engine", command, "--stats-interval", "0"],
                   ("net_raw", "net_admin"), str(tmp_path), tun=tun)
    p = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    if ready not in line:
        _, err = _stop(p)
        raise AssertionError(line + (err or ""))
    return p


def tables_left(tb) -> str:
    return tb.run("mmr", "nft", "list", "tables") or ""


@pytest.mark.privileged
@pytest.mark.parametrize("caps, needs", [(("net_raw",), "nftables"), (("net_admin",), "CAP_NET_RAW"), ((), "CAP_NET_RAW")])
def test_run_without_a_capability_says_which(testbed, tmp_path, caps, needs):
    """Without one of the two: one sentence naming what is missing, exit 2, nothing left."""
    argv = as_user(testbed.ns("mmr"), [sys.executable, "-m", "engine", "run", "--duration", "2"],
                   caps, str(tmp_path))
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and needs in p.stderr, p.stderr
    assert "inet mmr" not in tables_left(testbed)


@pytest.mark.privileged
def test_host_as_nobody_with_two_capabilities(tmp_path):
    """mmr host as uid 65534 with the two capabilities (and /dev/net/tun 0666 as on Debian):
    vi0 comes up and carries a ping to the peer; everything is removed at SIGTERM."""
    with make_testbed("sv", HOST) as tb:
        p = start_as_nobody(tb.ns("host"), "host", "vi0 up", tmp_path, tun=True)
        try:
            out = tb.run("host", "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", PEER_ADDR, check=False)
            assert out is not None and " 0% packet loss" in out, out
        finally:
            _, err = _stop(p)
        assert p.returncode == 0, err
        assert "vi0" not in (tb.run("host", "ip", "-br", "link") or "")


@pytest.mark.privileged
def test_cleanup_removes_a_plain_table_left_by_a_crash_and_spares_an_owned_one(testbed):
    """A plain 'inet mmr' table (what mmr falls back to where nftables has no owner tables)
    that outlived its mmr black-holes the LAN; 'mmr cleanup' removes it and the kernel
    forwards again.  A table a running mmr owns is left alone (exit 1)."""
    ping = ("mn", "ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", CN_ADDR)
    left = ('table inet mmr { chain pre { type filter hook prerouting priority raw; '
            'iifname "lan0" ip6 daddr != 2001:db8:1::/64 drop; }; }')
    subprocess.run(in_ns(testbed, "mmr", "nft", "-f", "-"), input=left, text=True, check=True)
    try:
        out = testbed.run(*ping, check=False) or ""
        assert " 0% packet loss" not in out                        # the leftover black-holes
        p = subprocess.run(in_ns(testbed, "mmr", sys.executable, "-m", "engine", "cleanup"),
                           capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert p.returncode == 0 and "inet mmr: removed" in p.stdout, p.stdout + p.stderr
        assert " 0% packet loss" in (testbed.run(*ping, check=False) or "")
        assert "inet mmr" not in tables_left(testbed)
        again = subprocess.run(in_ns(testbed, "mmr", sys.executable, "-m", "engine", "cleanup"),
                               capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert again.returncode == 0 and "inet mmr: not present" in again.stdout
    finally:
        subprocess.run(in_ns(testbed, "mmr", "nft", "delete", "table", "inet", "mmr"), capture_output=True)
    r = subprocess.Popen(in_ns(testbed, "mmr", sys.executable, "-m", "engine", "run", "--stats-interval", "0"),
                         cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert "forwarding" in r.stderr.readline()
        p = subprocess.run(in_ns(testbed, "mmr", sys.executable, "-m", "engine", "cleanup"),
                           capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert p.returncode == 1 and "owned by a running mmr" in p.stdout, p.stdout + p.stderr
        assert "inet mmr" in tables_left(testbed)
        assert " 0% packet loss" in (testbed.run(*ping, check=False) or "")
    finally:
        _stop(r)
    assert r.returncode == 0


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_bad_stats_interval_is_one_sentence(value):
    p = subprocess.run([sys.executable, "-m", "engine", "run", "--stats-interval", value],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--stats-interval" in p.stderr, p.stderr
