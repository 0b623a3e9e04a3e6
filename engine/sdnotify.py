"""systemd's service notification protocol (sd_notify(3)), without libsystemd.

    READY=1         once the engine forwards (the kernel guard is in place)
    STATUS=...      the ready line, then each summary line (``systemctl status mmr``)
    WATCHDOG=1      from the forwarding loop's housekeeping, at half of $WATCHDOG_USEC, so a
                    loop that stops turning is killed and restarted by systemd (WatchdogSec=)
    STOPPING=1      when mmr starts handing the devices back to the kernel

Outside systemd ($NOTIFY_SOCKET unset) every call does nothing.  A send never blocks
(MSG_DONTWAIT) and a failed send is ignored: the packet path never waits for systemd.
"""
from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self.addr = None
        if addr.startswith("@"):
            self.addr = "\0" + addr[1:]        # abstract socket
        elif addr.startswith("/"):
            self.addr = addr
        self.sock = None
        if self.addr is not None:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            except OSError:
                self.addr = None
        self.watchdog_s = None
        try:
            usec = int(env.get("WATCHDOG_USEC", ""))
            pid = env.get("WATCHDOG_PID")
            if usec > 0 and (pid is None or pid == str(os.getpid())):
                self.watchdog_s = usec / 1e6 / 2
        except ValueError:
            pass
        self.next_watchdog = 0.0

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, **fields) -> bool:
        """send(READY=1, STATUS="...") -> True when systemd got the datagram."""
        if self.sock is None:
            return False
        text = "\n".join(f"{k}={str(v).replace(chr(10), ' ')}" for k, v in fields.items())
        try:
            self.sock.sendto(text.encode(), socket.MSG_DONTWAIT, self.addr)
            return True
        except OSError:
            return False

    def watchdog(self, now: float) -> None:
        """Call often (monotonic ``now``); pings at half the watchdog interval."""
        if self.watchdog_s is not None and now >= self.next_watchdog:
            self.next_watchdog = now + self.watchdog_s
            self.send(WATCHDOG=1)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
