"""Small helpers around iproute2 for namespaces, veth pairs, sysctls and offloads."""
from __future__ import annotations

import shutil
import subprocess

from engine.errors import UserError


def sh(*args: str, ns: str | None = None, check: bool = True, timeout: float = 20) -> str:
    """Run a command (in namespace ns); returns stdout; raises RuntimeError with stderr."""
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def require_tools() -> None:
    if shutil.which("ip") is None:
        raise UserError("iproute2 ('ip') is not installed; install it (apt-get install iproute2)")


def addresses(dev: str) -> list:
    """The IPv6 and IPv4 addresses on dev (link-local ones included), from iproute2."""
    import ipaddress

    out = subprocess.run(["ip", "-o", "addr", "show", "dev", dev], capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) > 3 and parts[2] in ("inet", "inet6"):
            found.append(ipaddress.ip_interface(parts[3]).ip)
    return found


def namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def sysctl(ns: str | None, key: str, value) -> None:
    sh("sysctl", "-qw", f"{key}={value}", ns=ns)


def read_sysctl(ns: str | None, key: str) -> str:
    return sh("sysctl", "-n", key, ns=ns).strip()


def disable_offloads(dev: str, ns: str | None = None) -> bool:
    """Switch TSO/GSO/GRO/LRO and TX checksum offload off so AF_PACKET sees wire-sized
    frames with complete checksums.  Returns False when ethtool is missing or refuses."""
    if shutil.which("ethtool") is None:
        return False
    ok = True
    for feature in ("tso", "gso", "gro", "lro", "tx", "rx"):
        p = subprocess.run((["ip", "netns", "exec", ns] if ns else []) + ["ethtool", "-K", dev, feature, "off"],
                           capture_output=True, text=True)
        if p.returncode not in (0, 74):      # 74: "feature not changeable" on some drivers
            ok = False
    return ok


def link_mac(dev: str, ns: str | None = None) -> bytes:
    text = sh("cat", f"/sys/class/net/{dev}/address", ns=ns).strip()
    return bytes.fromhex(text.replace(":", ""))


# receive-side coalescing: with any of these on, the kernel hands AF_PACKET super-packets
# larger than the MTU, which a forwarder must not pass on as they are
COALESCING = {"generic-receive-offload": "gro", "large-receive-offload": "lro", "rx-gro-hw": "rx-gro-hw"}


def coalescing_on(dev: str, ns: str | None = None) -> list[str] | None:
    """The receive coalescing features switched on (and changeable) on dev, as ethtool -K
    names; None when ethtool is missing or cannot read the device."""
    if shutil.which("ethtool") is None:
        return None
    p = subprocess.run((["ip", "netns", "exec", ns] if ns else []) + ["ethtool", "-k", dev],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return None
    on = []
    for line in p.stdout.splitlines():
        name, _, state = line.partition(":")
        if name.strip() in COALESCING and state.split()[:1] == ["on"] and "[fixed]" not in state:
            on.append(COALESCING[name.strip()])
    return on


def set_features(dev: str, features: list[str], state: str, ns: str | None = None) -> bool:
    if not features:
        return True
    args = [x for f in features for x in (f, state)]
    p = subprocess.run((["ip", "netns", "exec", ns] if ns else []) + ["ethtool", "-K", dev, *args],
                       capture_output=True, text=True)
    return p.returncode == 0
