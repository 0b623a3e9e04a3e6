"""Tagging on the mobile node: attach the traffic control option to a socket's packets.

The draft's testbed attached the option with ip6tables and libipq; Linux has a socket API
for it: the IPV6_HOPOPTS sticky option (RFC 3542) carries a whole hop-by-hop header that the
kernel puts on every packet the socket sends.  Setting it needs CAP_NET_RAW (root).
"""
from __future__ import annotations

import socket
import struct

from engine import constants as C
from engine._kernel import IPV6_HOPOPTS  # <netinet/in.h>
from engine.errors import UserError


def hbh_option_bytes(service: int, preference: int, option_type: int = C.DEFAULT_OPTION_TYPE) -> bytes:
    """A hop-by-hop header (8 bytes): next header (the kernel fills it), length 0, the
    traffic control option (type, 3, service, preference) and one Pad1."""
    if not 0 <= service <= 255 or not 0 <= preference <= 65535:
        raise ValueError("service must be 0..255 and preference 0..65535")
    if not 0x20 <= option_type <= 0x3F:
        raise ValueError("option_type must be of the form 001xxxxx (0x20..0x3F)")
    return bytes([0, 0]) + struct.pack("!BBBH", option_type, C.OPTION_DATA_LEN, service, preference) + b"\x00"


def tag_socket(sock: socket.socket, service: int, preference: int,
               option_type: int = C.DEFAULT_OPTION_TYPE) -> None:
    """Every packet sock sends from now on carries the option."""
    if sock.family != socket.AF_INET6:
        raise UserError("the traffic control option is an IPv6 hop-by-hop option; use an AF_INET6 socket")
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_HOPOPTS, hbh_option_bytes(service, preference, option_type))
    except PermissionError:
        raise UserError("setting IPV6_HOPOPTS needs CAP_NET_RAW; run as root") from None


def untag_socket(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_HOPOPTS, None, 0)
