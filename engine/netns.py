"""Small helpers around iproute2 for the testbed: namespaces, commands inside them, sysctls."""
from __future__ import annotations

import shutil
import subprocess

from engine.errors import UserError


def sh(*args: str, ns: str | None = None, check: bool = True, timeout: float = 20, cwd: str | None = None) -> str:
    """Run a command (in namespace ns); returns stdout; raises RuntimeError with stderr."""
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def require_tools() -> None:
    if shutil.which("ip") is None:
        raise UserError("iproute2 ('ip') is not installed; install it (apt-get install iproute2)")


def namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def sysctl(ns: str | None, key: str, value) -> None:
    """Write /proc/sys/KEY (in namespace ns): no procps needed."""
    path = "/proc/sys/" + key.replace(".", "/")
    sh("sh", "-c", f"echo {int(value)} > {path}", ns=ns)


def link_mac(dev: str, ns: str | None = None) -> bytes:
    text = sh("cat", f"/sys/class/net/{dev}/address", ns=ns).strip()
    return bytes.fromhex(text.replace(":", ""))
