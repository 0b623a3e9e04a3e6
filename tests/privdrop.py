"""Run a command in a testbed namespace as an unprivileged user that holds only some
capabilities (CAP_NET_RAW, CAP_NET_ADMIN), the way systemd's ``DynamicUser=yes`` +
``AmbientCapabilities=`` runs the service.

Two things of this lab machine would stop such a user before mmr is even reached, and
neither is true of a stock Debian router, so a private mount namespace (``unshare -m``: the
mounts vanish with the command) puts them right for the one command:

* the interpreter lives under /root (pyenv), and /root is mode 0700: a tmpfs of mode 0755 is
  mounted over /root with the interpreter's directory bound back into it;
* /dev/net/tun is mode 0600 in this container; Debian's udev makes it 0666: a 0666 node of
  the same device is bound over it (host mode only).
"""
import os
import shlex
import sys

PROGRAMS = ("unshare", "sh", "mount", "mkdir", "rm", "mknod", "ip", "setpriv")   # what the script runs


def _real_top_under_root() -> str | None:
    """/root/<first component> holding the interpreter, or None when it is elsewhere."""
    real = os.path.realpath(sys.executable)
    parts = real.split(os.sep)
    if len(parts) > 3 and parts[1] == "root":
        return os.sep.join(parts[:3])
    return None


def as_user(ns: str, argv: list[str], caps: tuple[str, ...], scratch: str, uid: int = 65534,
            tun: bool = False) -> list[str]:
    """argv that runs ``argv`` in namespace ``ns`` as ``uid`` (no groups) with ``caps``
    (names without CAP_, e.g. "net_raw") as its only, ambient capabilities."""
    steps = []
    top = _real_top_under_root()
    if top is not None:
        keep = os.path.join(scratch, "interp")
        os.makedirs(keep, exist_ok=True)
        steps += [f"mount --bind {shlex.quote(top)} {shlex.quote(keep)}",
                  "mount -t tmpfs -o mode=0755 tmpfs /root",
                  f"mkdir -p {shlex.quote(top)}",
                  f"mount --bind {shlex.quote(keep)} {shlex.quote(top)}"]
    if tun:
        node = os.path.join(scratch, "tun")
        steps += [f"rm -f {shlex.quote(node)}", f"mknod -m 0666 {shlex.quote(node)} c 10 200",
                  f"mount --bind {shlex.quote(node)} /dev/net/tun"]
    capset = ",".join(["-all"] + [f"+{c}" for c in caps])
    inner = ["ip", "netns", "exec", ns, "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
             f"--inh-caps={capset}", f"--ambient-caps={capset}", f"--bounding-set={capset}", *argv]
    steps.append("exec " + " ".join(shlex.quote(a) for a in inner))
    return ["unshare", "-m", "--propagation", "private", "sh", "-ec", "; ".join(steps)]
