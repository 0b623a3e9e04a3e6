"""Hook scripts (``hook`` in [monitor] or an [[uplink]]): a real executable written to
tmp_path runs on uplink events with the event in its environment; it never makes tick()
wait, one runs at a time per uplink (later events wait, coalesced), a hook that outlives its
timeout is killed with everything it started, a failing one is logged."""
import json
import os
import signal
import sys
import time

import pytest

from engine.connmgr import HOOK_KILL_GRACE_S
from engine.errors import ConfigError
from test_connmgr_unit import UP, load_text, policy_text
from test_connmgr_unit import manager as fake_clock_manager

RECORDER = """#!{python}
import json, os, sys, time
out = {out!r}
start = time.time()
time.sleep(float(os.environ.get("HOOK_TEST_SLEEP", "0")) or {sleep})
with open(out, "a") as f:
    f.write(json.dumps({{"env": dict(os.environ), "start": start, "end": time.time()}}) + "\\n")
sys.exit({status})
"""


def hook(tmp_path, name="hook", body=None, sleep=0.0, status=0):
    """An executable hook in tmp_path; by default it appends its environment to NAME.jsonl."""
    path = tmp_path / name
    out = tmp_path / f"{name}.jsonl"
    path.write_text(body if body is not None else RECORDER.format(python=sys.executable, out=str(out),
                                                                   sleep=sleep, status=status))
    path.chmod(0o755)
    return str(path), out


def manager(*args, **kw):
    """test_connmgr_unit's manager, its fake clock set to the real one (hooks run in real time)."""
    cm, st, flows, clock, log = fake_clock_manager(*args, **kw)
    clock.t = time.monotonic()
    return cm, st, flows, clock, log


def runs(out):
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def real_time(cm, clock, seconds, until=None):
    """Tick on the real clock (the fake clock follows it) for up to ``seconds``; returns the
    longest tick() in seconds."""
    longest, t0 = 0.0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        clock.t = time.monotonic()
        a = time.perf_counter()
        cm.tick()
        longest = max(longest, time.perf_counter() - a)
        if until is not None and until():
            break
        time.sleep(0.01)
    return longest


def quiet(cm):
    """No hook running or waiting."""
    return not cm.hooks.active()


def test_link_events_run_the_hook_with_the_event_in_its_environment(tmp_path):
    path, out = hook(tmp_path)
    cm, st, flows, clock, log = manager(f'\n[monitor]\nhook = "{path}"\n')
    st.links[2].flags = 0
    cm.links_changed()
    real_time(cm, clock, 10, lambda: quiet(cm))
    st.links[2].flags = UP
    cm.links_changed()
    real_time(cm, clock, 10, lambda: quiet(cm))
    got = runs(out)
    assert [r["env"]["ACTION"] for r in got] == ["down", "up"], got
    down = got[0]["env"]
    assert (down["UPLINK"], down["DEVICE"], down["FAMILY"], down["GATEWAY"], down["REASON"], down["ADMIN"],
            down["USABLE"], down["DEGRADED"]) == ("ar1", "up1", "ipv6", "2001:db8:a1::1", "link down", "auto",
                                                   "0", "0")
    assert got[1]["env"]["USABLE"] == "1" and got[1]["env"]["REASON"] == "link up and probes answer"
    # an environment of its own: the engine's variables do not leak into it
    allowed = {"PATH", "ACTION", "UPLINK", "DEVICE", "FAMILY", "GATEWAY", "REASON", "ADMIN", "USABLE",
               "DEGRADED", "RTT_MS", "LOSS", "LC_CTYPE", "PWD"}
    assert set(down) <= allowed, set(down) - allowed
    assert cm.status()[0]["hook"]["last"]["action"] == "up" and cm.status()[0]["hook"]["last"]["status"] == 0
    assert cm.status()[1]["hook"]["running"] is None


def test_a_hook_that_never_ends_is_killed_and_never_delays_tick(tmp_path):
    """The hook ignores SIGTERM (and its child inherits that): SIGTERM at the timeout,
    SIGKILL HOOK_KILL_GRACE_S later to its whole process group; tick() stays fast."""
    pidfile = tmp_path / "child.pid"
    path, _ = hook(tmp_path, body=f"#!/bin/sh\ntrap '' TERM\nsleep 1000 &\necho $! > {pidfile}\nwait\n")
    cm, st, flows, clock, log = manager(f'\n[monitor]\nhook = "{path}"\nhook_timeout_s = 0.3\n')
    clock.t = time.monotonic()
    t0 = time.perf_counter()
    cm.set_admin("ar2", "down")
    assert time.perf_counter() - t0 < 0.2                   # starting it does not wait for it
    proc = cm.hooks.running[1]["proc"]
    longest = real_time(cm, clock, 0.3 + HOOK_KILL_GRACE_S + 5, lambda: quiet(cm))
    assert quiet(cm), cm.hooks.status(1)
    assert longest < 0.05, longest
    assert proc.returncode == -signal.SIGKILL
    assert any("(admin-down) still runs after 0.3 s; killed" in line for line in log), log
    child = int(pidfile.read_text())
    for _ in range(100):                                     # the sleep went with it (its group)
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        try:
            if open(f"/proc/{child}/stat").read().split()[2] == "Z":
                break
        except FileNotFoundError:                            # reaped between the two looks
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"the hook's child {child} survived")
    # both events ran, one after the other (admin-down, then down for the same uplink)
    assert cm.hooks.killed == 2


def test_one_hook_at_a_time_per_uplink_and_waiting_events_coalesce(tmp_path):
    path, out = hook(tmp_path, sleep=0.3)
    cm, st, flows, clock, log = manager(f'\n[monitor]\nhook = "{path}"\n')
    clock.t = time.monotonic()
    for flags in (0, UP, 0, UP, 0):               # ar1: down, up, down, up, down within a moment
        st.links[2].flags = flags
        cm.links_changed()
    st.links[3].flags = 0                          # ar2: its own hook runs beside ar1's
    cm.links_changed()
    assert cm.status()[0]["hook"] == {"running": "down", "waiting": ["down"], "last": None}
    real_time(cm, clock, 15, lambda: quiet(cm))
    got = runs(out)
    ar1 = [r for r in got if r["env"]["UPLINK"] == "ar1"]
    assert [r["env"]["ACTION"] for r in ar1] == ["down", "down"]        # the latest state, not the history
    assert ar1[0]["end"] <= ar1[1]["start"]                              # never two at once
    ar2 = [r for r in got if r["env"]["UPLINK"] == "ar2"]
    assert [r["env"]["ACTION"] for r in ar2] == ["down"] and ar2[0]["start"] < ar1[0]["end"]


def test_a_failing_hook_is_logged_and_the_engine_goes_on(tmp_path):
    path, out = hook(tmp_path, status=3)
    cm, st, flows, clock, log = manager(uplink0=f'hook = "{path}"')
    cm.set_admin("ar1", "down")
    real_time(cm, clock, 10, lambda: quiet(cm))
    assert [r["env"]["ACTION"] for r in runs(out)] == ["admin-down", "down"]
    assert runs(out)[1]["env"]["REASON"] == "admin down"
    assert sum(f"hook {path} for uplink ar1" in line and "exited with status 3" in line for line in log) == 2
    assert cm.status()[1]["hook"] is None                   # ar2 has no hook
    os.unlink(path)                                          # gone after the policy was loaded
    cm.set_admin("ar1", "auto")
    real_time(cm, clock, 5, lambda: quiet(cm))
    assert any("could not start" in line for line in log), log
    assert cm.status()[0]["usable"]


def test_degraded_and_recovered_run_the_hook(tmp_path):
    path, out = hook(tmp_path)
    cm, st, flows, clock, log = manager(uplink0=f'hook = "{path}"\ndegraded_rtt_ms = 100.0')
    for rtt in [0.2] * 15 + [0.01] * 25:
        cm._probe_result(cm.health[0], rtt, clock.t)
        real_time(cm, clock, 0.0)
    real_time(cm, clock, 10, lambda: quiet(cm))
    got = [r["env"] for r in runs(out)]
    assert [e["ACTION"] for e in got] == ["degraded", "recovered"], got
    assert got[0]["REASON"].startswith("RTT ") and "> 100 ms" in got[0]["REASON"] and got[0]["DEGRADED"] == "1"
    assert float(got[0]["RTT_MS"]) > 100 and got[0]["USABLE"] == "1"
    assert got[1]["DEGRADED"] == "0" and "< 80 ms" in got[1]["REASON"]


def test_a_per_uplink_hook_overrides_and_empty_disables(tmp_path):
    path, out = hook(tmp_path)
    other, out2 = hook(tmp_path, "other")
    cm, st, flows, clock, log = manager(f'\n[monitor]\nhook = "{path}"\n', uplink0=f'hook = "{other}"',
                                        uplink1='hook = ""')
    cm.set_admin("ar1", "down")
    cm.set_admin("ar2", "down")
    real_time(cm, clock, 10, lambda: quiet(cm))
    assert runs(out) == [] and [r["env"]["UPLINK"] for r in runs(out2)] == ["ar1", "ar1"]


def test_close_kills_a_running_hook(tmp_path):
    path, _ = hook(tmp_path, body="#!/bin/sh\nexec sleep 1000\n")
    cm, st, flows, clock, log = manager(f'\n[monitor]\nhook = "{path}"\n')
    cm.set_admin("ar1", "down")
    proc = cm.hooks.running[0]["proc"]
    t0 = time.perf_counter()
    cm.close()
    assert time.perf_counter() - t0 < 1.0 and proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("value, problem", [
    ("{missing}", "is not an executable file; create it and make it executable (chmod +x), or write hook = \"\""),
    ("{plain}", "is not an executable file"),
    ("{tmp}", "is not an executable file"),                 # a directory
    ("hooks/up.sh", "is not an absolute path"),
])
def test_a_bad_hook_ends_at_load_in_one_sentence(tmp_path, value, problem):
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    value = value.format(missing=tmp_path / "nope", plain=plain, tmp=tmp_path)
    for text, key in ((policy_text(f'\n[monitor]\nhook = "{value}"\n'), "monitor.hook"),
                      (policy_text(uplink1=f'hook = "{value}"'), "uplink[1].hook")):
        with pytest.raises(ConfigError) as e:
            load_text(text)
        msg = str(e.value)
        assert f": {key}: " in msg and problem in msg and "\n" not in msg and len(msg) < 400, msg


def test_hook_settings_are_checked():
    with pytest.raises(ConfigError, match=r"monitor\.hook_timeout_s: 0\.0 is out of range"):
        load_text(policy_text("\n[monitor]\nhook_timeout_s = 0.0\n"))
    with pytest.raises(ConfigError, match=r"uplink\[0\]\.hook: must be a string"):
        load_text(policy_text(uplink0="hook = 5"))
    assert load_text(policy_text('\n[monitor]\nhook = ""\n')).uplinks[0].monitor["hook"] == ""
