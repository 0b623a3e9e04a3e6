"""Helpers for the privileged tests that run in the draft's testbed: a fresh testbed per
module (unique namespace prefix, removed even when a test fails), peers run with
``python -m engine.peers`` inside a namespace, and ``mmr run`` started and stopped cleanly."""
import contextlib
import json
import os
import subprocess
import sys
import time

from engine.testbed import CN_ADDR, Testbed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def make_testbed(module_tag: str, topology=None):
    tb = Testbed(f"{module_tag}{os.getpid() % 10000}-", topology)
    tb.down()
    try:
        tb.up()
        yield tb
    finally:
        tb.down()


def in_ns(tb, node, *cmd):
    return ["ip", "netns", "exec", tb.ns(node), *map(str, cmd)]


def peer(tb, node, *args, timeout=30):
    return subprocess.run(in_ns(tb, node, sys.executable, "-m", "engine.peers", *args),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def start_peer(tb, node, *args):
    """A long-running peer (sink or server); returns once it printed 'ready'."""
    p = subprocess.Popen(in_ns(tb, node, sys.executable, "-m", "engine.peers", *args),
                         stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = p.stdout.readline().strip()
    assert line == "ready", line
    return p


def udp_exchange(tb, port, svc, pref, n=20):
    sink = start_peer(tb, "cn", "udp-sink", port, 3)
    snd = peer(tb, "mn", "udp-send", CN_ADDR, port, n, svc, pref)
    assert snd.returncode == 0, snd.stderr
    out, _ = sink.communicate(timeout=10)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def mmr(tb, *args, timeout=30):
    """Run ``mmr ARGS`` in the MMR namespace to completion."""
    return subprocess.run(in_ns(tb, "mmr", sys.executable, "-m", "engine", *args),
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


@contextlib.contextmanager
def running_mmr(tb, node, command, ready, *args):
    """``mmr COMMAND ARGS`` in a namespace; yields (process, the startup lines) once a line
    contains ``ready``, and stops it with SIGTERM (like an init system) afterwards."""
    p = subprocess.Popen(in_ns(tb, node, sys.executable, "-m", "engine", command, "--stats-interval", "0",
                               *args), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        while True:
            line = p.stderr.readline()
            if not line:
                raise AssertionError(f"mmr {command} ended before it was ready:\n" + "".join(lines))
            lines.append(line)
            if ready in line:
                break
        yield p, lines
    finally:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        rest = p.stderr.read() if not p.stderr.closed else ""
    # what the engine logged after it was ready (unless the test read it): no fault inside
    assert "internal error" not in rest and "Traceback" not in rest, rest


def running_router(tb, *args):
    """``mmr run`` in the MMR namespace of the draft testbed."""
    return running_mmr(tb, "mmr", "run", "forwarding", *args)


def tcp_across(tb, client, server, addr, port, cut, restore, check=None):
    """A paced TCP transfer (12 MB, 64 KiB every 10 ms, tagged video/QoS) from client to
    server; after 0.8 s ``check()`` (if given) and the ``cut`` command run on the node they
    name, ``restore`` afterwards.  Returns (the sender's answer, the sink's longest pause ms)."""
    sink = start_peer(tb, server, "tcp-sink", port)
    send = subprocess.Popen(in_ns(tb, client, sys.executable, "-m", "engine.peers", "tcp-send", addr, port,
                                  12_000_000, 3, 2, 10), stdout=subprocess.PIPE, text=True, cwd=ROOT)
    time.sleep(0.8)
    if check is not None:
        check()
    tb.run(*cut)
    try:
        out, _ = send.communicate(timeout=60)
        gap = json.loads(sink.communicate(timeout=30)[0].strip().splitlines()[-1])["max_gap_ms"]
    finally:
        tb.run(*restore)
    return json.loads(out), gap


def iperf(tb, client, server, addr, seconds):
    """iperf3 client -> server (bound to addr) for seconds; received bits per second."""
    srv = subprocess.Popen(in_ns(tb, server, "iperf3", "-s", "-1", "-B", addr),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = tb.run(client, "iperf3", "-c", addr, "-t", str(seconds), "-J", timeout=seconds + 30)
        return json.loads(out)["end"]["sum_received"]["bits_per_second"]
    finally:
        srv.kill()
        srv.wait()


def until(what, check, seconds=15.0):
    """check() again and again until it returns something true, which is returned; fails
    naming what it waited for after seconds (a bound for a broken run, not a timing claim)."""
    end = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < end, what
        time.sleep(0.1)


def exists(tb, node, dev) -> bool:
    return tb.run(node, "ip", "link", "show", dev, check=False) is not None


def flow_uplinks(tb, node, dport) -> list:
    """The uplink of each flow to dport in ``mmr flows`` run in node's namespace."""
    p = subprocess.run(in_ns(tb, node, sys.executable, "-m", "engine", "flows", "--json"),
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert p.returncode == 0, p.stderr
    return [f["uplink"] for f in json.loads(p.stdout)["flows"] if f["dport"] == dport]


@contextlib.contextmanager
def echoing(tb, server, client, addr, port, seconds, n):
    """A UDP exchange that runs while the block does: engine.peers' echo-server on server
    (bound to addr, for seconds) and its echo-client on client sending n datagrams to
    addr:port.  Yields the client's process (its output: the JSON tally once it is done);
    both are stopped afterwards whatever the block did, so no peer outlives a failed test."""
    srv = start_peer(tb, server, "echo-server", port, seconds, addr)
    c = subprocess.Popen(in_ns(tb, client, sys.executable, "-m", "engine.peers", "echo-client", addr, port, n),
                         stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        yield c
    finally:
        if c.poll() is None:
            c.kill()
            c.wait()
        srv.kill()
        srv.wait()
