"""An L3 link for the testbed: two TUN devices in two network namespaces joined by this process.

    python3 -m engine.l3link NS_A DEV_A NS_B DEV_B

The kernel here loads no tunnel types (ipip, sit, gre, wireguard), so a link without an
Ethernet header -- what PPPoE, an LTE modem in raw-IP mode or a VPN gives a router -- is made
of two TUN devices (IFF_TUN, no packet information): every IP packet written to one by its
namespace's stack is read here and written to the other.  Like a PPP link the devices have no
MAC addresses, no ARP/ND and point-to-point addressing (``ip addr add A peer B``).

It prints ``ready`` once both devices exist, then relays until SIGTERM/SIGINT or until one
device goes away (deleted with ``ip link del``); it exits then and both devices vanish with
its file descriptors, as a modem's device does when the modem resets.  The testbed starts it
(engine/testbed.py) and stops it before it removes the namespaces.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import signal
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
BURST = 64                    # packets moved per wake-up and direction


def enter_netns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns into {name}: {os.strerror(e)}")
    finally:
        os.close(fd)


def open_tun(dev: str) -> int:
    """A TUN device named dev in the current network namespace (gone when the fd closes)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def relay(a: int, b: int) -> None:
    """Move packets both ways until a device disappears or a signal stops the process."""
    other = {a: b, b: a}
    poller = select.poll()
    for fd in (a, b):
        poller.register(fd, select.POLLIN)
    while True:
        for fd, ev in poller.poll():
            if ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                return
            for _ in range(BURST):
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError as e:        # EBADFD: the device was deleted
                    if e.errno in (errno.EINTR, errno.EAGAIN):
                        break
                    return
                try:
                    os.write(other[fd], pkt)
                except OSError as e:        # the far device is down (EIO) or full: the packet is lost
                    if e.errno not in (errno.EIO, errno.EAGAIN, errno.ENOBUFS, errno.EINVAL):
                        return


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    ns_a, dev_a, ns_b, dev_b = argv
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    enter_netns(ns_a)
    fa = open_tun(dev_a)
    enter_netns(ns_b)
    fb = open_tun(dev_b)
    print("ready", flush=True)
    try:
        relay(fa, fb)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
