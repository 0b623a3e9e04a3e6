"""Helpers for the privileged tests that run in the draft's testbed: a fresh testbed per
module (unique namespace prefix, removed even when a test fails), peers run with
``python -m engine.peers`` inside a namespace, and ``mmr run`` started and stopped cleanly."""
import contextlib
import json
import os
import subprocess
import sys

from engine.testbed import CN_ADDR, Testbed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def make_testbed(module_tag: str):
    tb = Testbed(f"{module_tag}{os.getpid() % 10000}-")
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
def running_router(tb, *args):
    """``mmr run`` in the MMR namespace; yields (process, the startup lines) once it forwards,
    and stops it with SIGTERM (like an init system) afterwards."""
    p = subprocess.Popen(in_ns(tb, "mmr", sys.executable, "-m", "engine", "run", "--stats-interval", "0",
                               *args), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        while True:
            line = p.stderr.readline()
            if not line:
                raise AssertionError("mmr run ended before forwarding:\n" + "".join(lines))
            lines.append(line)
            if "forwarding" in line:
                break
        yield p, lines
    finally:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
