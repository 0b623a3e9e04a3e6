"""The control protocol's validation: every request is a JSON object with a known command
and typed arguments; anything else is an error answer (tests/test_router_lifecycle.py sends
them to a running router).  Then who may ask what: a control server in this process, asked by
real unprivileged clients (setpriv), over an abstract and a path socket."""
import contextlib
import grp
import json
import os
import select
import shutil
import subprocess
import tempfile
import threading

import pytest

from engine.config import default_config_path, load_config
from engine.control import MAX_READERS, READ_ONLY, ControlServer, request, validate
from engine.errors import ConfigError, UserError

BAD = [b"[]", b'"status"', b"1", b"null", b'{"cmd": "flows", "limit": 1e999}', b"[" * 60000,
       b'{"cmd": "flows", "limit": -1}', b'{"cmd": "flows", "limit": true}', b'{"cmd": "nope"}',
       b'{"cmd": ["status"]}', b'{"cmd": "status", "extra": 1}', b'{"cmd": "flows", "uplink": 5}',
       b"\xff\xfe", b"", b'{"cmd": "flows", "limit": 99999999999}',
       # mmr uplink NAME MODE and mmr status --config
       b'{"cmd": "uplink"}', b'{"cmd": "uplink", "name": "ar1"}', b'{"cmd": "uplink", "mode": "down"}',
       b'{"cmd": "uplink", "name": "ar1", "mode": "sideways"}', b'{"cmd": "uplink", "name": "ar1", "mode": "DOWN"}',
       b'{"cmd": "uplink", "name": "ar1", "mode": 1}', b'{"cmd": "uplink", "name": "ar1", "mode": ["down"]}',
       b'{"cmd": "uplink", "name": "ar1", "mode": null}', b'{"cmd": "uplink", "name": null, "mode": "up"}',
       b'{"cmd": "uplink", "name": 7, "mode": "up"}', b'{"cmd": "uplink", "name": {"a": 1}, "mode": "up"}',
       b'{"cmd": "uplink", "name": "' + b"x" * 65 + b'", "mode": "up"}',
       b'{"cmd": "uplink", "name": "ar1", "mode": "down", "force": true}',
       b'{"cmd": "uplink", "name": "ar1", "mode": "down\\u0000"}',
       b'{"cmd": "config", "path": "/etc/shadow"}', b'{"cmd": "config", "uplink": "ar1"}']


@pytest.mark.parametrize("raw", BAD, ids=[repr(b[:20]) + str(i) for i, b in enumerate(BAD)])
def test_bad_requests_are_refused_with_a_sentence(raw):
    with pytest.raises(ValueError) as e:
        validate(raw)
    assert str(e.value) and "\n" not in str(e.value)


def test_good_requests_pass():
    assert validate(b'{"cmd": "status"}') == {"cmd": "status"}
    assert validate(b'{"cmd": "flows", "limit": 5, "uplink": "ar1"}')["limit"] == 5
    assert validate(b'{"cmd": "flows", "uplink": null}')["uplink"] is None
    assert validate(b'{"cmd": "config"}') == {"cmd": "config"}
    for mode in ("down", "up", "auto"):
        req = {"cmd": "uplink", "name": "ar1", "mode": mode}
        assert validate(json.dumps(req).encode()) == req


def test_only_reading_commands_are_read_only():
    assert READ_ONLY == {"ping", "status", "flows", "config"}


def test_read_group_must_exist(tmp_path):
    base = open(default_config_path()).read()
    for name in ("mmr-no-such-group-here", "a\u0000b"):
        (tmp_path / "p.toml").write_text(base + f"\n[monitor]\ncontrol_read_group = {json.dumps(name)}\n")
        with pytest.raises(ConfigError) as e:
            load_config(str(tmp_path / "p.toml"))
        assert "monitor.control_read_group" in str(e.value) and "no group" in str(e.value)
        assert "\n" not in str(e.value)
    (tmp_path / "p.toml").write_text(base + '\n[monitor]\ncontrol_read_group = "users"\n')
    assert load_config(str(tmp_path / "p.toml")).monitor["control_read_group"] == "users"


# ------------------------------------------------------------------------------ who may ask what
SYSTEM_PYTHON = "/usr/bin/python3"     # the test's interpreter may live where nobody can read


def as_others(test):
    """Root (to switch users) and setpriv with the system python3 (the test's interpreter may
    live under /root, which nobody may read; the client below needs only the standard library)."""
    return pytest.mark.privileged(pytest.mark.skipif(
        os.environ.get("MMR_REQUIRE_PRIVILEGED") != "1" and (not os.path.exists(SYSTEM_PYTHON) or not shutil.which("setpriv")),
        reason="needs the system python3 and setpriv to act as another user (under CI: fails instead)")(test))


GROUP = "users"                        # a group every Debian system has (gid 100); nobody is no member
CLIENT = """
import json, socket, sys
addr, req = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect("\\0" + addr[1:] if addr.startswith("@") else addr)
except OSError as exc:
    print(json.dumps({"connect": exc.__class__.__name__})); sys.exit(0)
try:
    s.sendall(req.encode() + b"\\n")
except BrokenPipeError:
    pass                      # refused before the request was read: the answer is waiting
data = b""
while True:
    try:
        c = s.recv(65536)
    except ConnectionResetError:  # the refusal was sent with our request unread
        break
    if not c: break
    data += c
print(data.decode().strip())
"""


class Loop:
    """The engine's poll set in miniature: register/unregister with callbacks, a thread."""

    def __init__(self):
        self.callbacks, self.events, self.stop = {}, {}, threading.Event()

    def register(self, fd, events, callback):
        self.callbacks[fd], self.events[fd] = callback, events

    def unregister(self, fd):
        self.callbacks.pop(fd, None)
        self.events.pop(fd, None)

    def run(self):
        while not self.stop.is_set():
            p = select.poll()
            for fd, ev in list(self.events.items()):
                p.register(fd, ev)
            for fd, ev in p.poll(20):
                cb = self.callbacks.get(fd)
                if cb is not None:
                    cb(ev)


@contextlib.contextmanager
def server(addr, read_group):
    asked = []

    def handler(req):
        asked.append(req["cmd"])
        return {"ok": True, "cmd": req["cmd"]}
    loop = Loop()
    srv = ControlServer(addr, handler, loop, lambda line: None, read_group=read_group)
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    try:
        yield srv, asked
    finally:
        loop.stop.set()
        t.join()
        srv.close()


def as_user(addr, req, *ids):
    """The answer to req from a client running with setpriv IDS (e.g. --reuid=65534 ...)."""
    p = subprocess.run(["setpriv", *ids, SYSTEM_PYTHON, "-c", CLIENT, addr, json.dumps(req)],
                       capture_output=True, text=True, timeout=20, cwd="/")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


NOBODY = ("--reuid=65534", "--regid=65534")
GID = grp.getgrnam(GROUP).gr_gid


def who_may_ask_what(addr):
    """The read group (primary or supplementary) may read, not change; others get nothing."""
    with server(addr, GROUP) as (srv, asked):
        member_supp = (*NOBODY, f"--groups={GID}")
        member_primary = ("--reuid=65534", f"--regid={GID}", "--clear-groups")
        for ids in (member_supp, member_primary):
            for cmd in ("status", "flows", "config", "ping"):
                assert as_user(addr, {"cmd": cmd}, *ids) == {"ok": True, "cmd": cmd}
            for req in ({"cmd": "reload"}, {"cmd": "uplink", "name": "ar1", "mode": "down"}):
                ans = as_user(addr, req, *ids)
                assert ans["ok"] is False and "read-only" in ans["error"] and GROUP in ans["error"]
                assert f"{req['cmd']} needs root" in ans["error"]
        bad = as_user(addr, {"cmd": "uplink", "name": "ar1", "mode": "sideways"}, *member_supp)
        assert bad["ok"] is False and bad["error"].startswith("bad request")   # validated first
        assert asked == ["status", "flows", "config", "ping"] * 2   # no change ever reached the handler
        stranger = as_user(addr, {"cmd": "status"}, *NOBODY, "--clear-groups")
        # a path socket: the kernel refuses at connect(); abstract: mmr refuses by SO_PEERCRED
        assert stranger in ({"connect": "PermissionError"},
                            {"ok": False, "error": f"only root, or the group {GROUP} for reading, may use "
                                                   f"mmr's control socket"})
        assert asked == ["status", "flows", "config", "ping"] * 2
        assert request(addr, {"cmd": "reload"}) == {"ok": True, "cmd": "reload"}     # root: everything
        return stranger


@as_others
def test_read_group_on_an_abstract_socket():
    assert "error" in who_may_ask_what(f"@mmr-test-{os.getpid()}")


@as_others
def test_read_group_on_a_path_socket():
    top = tempfile.mkdtemp(prefix="mmr-ctl-")
    try:
        os.chmod(top, 0o755)
        addr = os.path.join(top, "run", "mmr.sock")
        stranger = who_may_ask_what(addr)
        assert stranger == {"connect": "PermissionError"}
    finally:
        shutil.rmtree(top)


@as_others
def test_path_socket_modes_follow_the_read_group():
    top = tempfile.mkdtemp(prefix="mmr-ctl-")
    try:
        addr = os.path.join(top, "run", "mmr.sock")
        with server(addr, GROUP) as (srv, _):
            for path, mode in ((addr, 0o660), (os.path.dirname(addr), 0o750)):
                st = os.stat(path)
                assert (st.st_mode & 0o777, st.st_gid) == (mode, GID)
            srv.set_read_group(None)                          # a reload that removes it
            for path, mode in ((addr, 0o600), (os.path.dirname(addr), 0o700)):
                # the owner's alone: the group may stay on the file, with no permission bits
                # (mmr gives a group only where asked: a user without CAP_CHOWN cannot take one back)
                assert os.stat(path).st_mode & 0o777 == mode
        with server(addr, None):                              # root only, as before
            assert os.stat(addr).st_mode & 0o777 == 0o600
    finally:
        shutil.rmtree(top)


@as_others
def test_root_only_without_a_read_group():
    addr = f"@mmr-test-{os.getpid()}"
    with server(addr, None) as (_, asked):
        for ids in ((*NOBODY, "--clear-groups"), (*NOBODY, f"--groups={GID}")):
            assert as_user(addr, {"cmd": "status"}, *ids) == {"ok": False, "error": "only root may control mmr"}
        assert asked == []


def test_a_read_group_that_vanished_is_a_sentence():
    with pytest.raises(UserError) as e:
        ControlServer("@mmr-test-x", None, Loop(), None, read_group="mmr-no-such-group-here")
    assert "control_read_group" in str(e.value)


HOLD = """
import json, socket, sys, time
addr, n = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("\\0" + addr[1:])
    socks.append(s)
time.sleep(0.5)
closed = 0
for s in socks:
    s.settimeout(0.05)
    try:
        closed += s.recv(1) == b""
    except socket.timeout:
        pass
print(json.dumps({"closed": closed}), flush=True)
time.sleep(float(sys.argv[3]))
"""


@as_others
def test_the_read_group_cannot_take_roots_slots():
    """Idle connections of the read group hold at most MAX_READERS slots; root still gets in."""
    addr = f"@mmr-test-{os.getpid()}"
    with server(addr, GROUP) as (srv, _):
        p = subprocess.Popen(["setpriv", *NOBODY, f"--groups={GID}", SYSTEM_PYTHON, "-c", HOLD, addr,
                              str(MAX_READERS + 3), "3"], stdout=subprocess.PIPE, text=True, cwd="/")
        try:
            assert json.loads(p.stdout.readline()) == {"closed": 3}     # while MAX_READERS are held open
            assert request(addr, {"cmd": "status"}) == {"ok": True, "cmd": "status"}
            assert srv.refused == 3
        finally:
            p.kill()
            p.wait()
