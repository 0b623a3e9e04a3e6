"""Shared contract of the data path: the parsed-row layout, reason codes, service classes.

Every stage (compiled in ``pyx/`` and pure-Python in ``engine/ref/``) uses these names and
numbers; nothing else in the tree repeats them.  ``pyx/rows.pxd`` declares the same row as a
packed C struct; ``tests/test_contract.py`` checks that the two agree byte for byte.
"""
from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------- parsed row (one per frame)
# The parser fills one row per frame.  Addresses are 16 bytes; IPv4 is IPv4-mapped
# (::ffff:a.b.c.d).  Ports are host order.  For ICMP/ICMPv6 echo the identifier is the source
# port.  For every fragment of a fragmented datagram (first or not) both ports are 0 and
# F_FRAGMENT is set, so all fragments share one flow key.
ROW_DTYPE = np.dtype(
    [
        ("src", "u1", (16,)),      # 0   source address (IPv4-mapped for IPv4)
        ("dst", "u1", (16,)),      # 16  destination address
        ("sport", "<u2"),          # 32  source port / echo identifier / 0
        ("dport", "<u2"),          # 34  destination port / 0
        ("proto", "u1"),           # 36  L4 protocol after the extension-header walk
        ("family", "u1"),          # 37  4, 6, or 0 when not IP
        ("tclass", "u1"),          # 38  IPv6 traffic class / IPv4 TOS byte (DSCP = tclass >> 2)
        ("has_opt", "u1"),         # 39  1 when the traffic control option was found
        ("service", "u1"),         # 40  option's service type, raw (0..255); 0 without option
        ("reason", "u1"),          # 41  REASON_* code; 0 = OK
        ("preference", "<u2"),     # 42  option's preference (host order); 0 without option
        ("l3_off", "<u2"),         # 44  offset of the IP header in the frame
        ("l4_off", "<u2"),         # 46  offset of the L4 header (0 when not reached)
        ("length", "<u4"),         # 48  frame length in bytes
        ("vlan", "<u2"),           # 52  outermost 802.1Q VLAN id, 0 when untagged
        ("hlim", "u1"),            # 54  hop limit / TTL
        ("flags", "u1"),           # 55  F_* bits
        ("icmp_type", "u1"),       # 56  ICMP/ICMPv6 type (0 otherwise)
        ("opt_off", "<u2"),        # 57  unknown hop-by-hop option acted on (RFC 8200 4.2): offset
                                   #     of its type byte from the IPv6 header's start; 0 = none
        ("_pad", "u1", (5,)),      # 59  pad to 64 bytes
    ],
    align=False,
)
assert ROW_DTYPE.itemsize == 64

# ---------------------------------------------------------------- frame metadata
# struct virtio_net_hdr (<linux/virtio_net.h>), which PACKET_VNET_HDR puts before every frame:
# RX says what the kernel left undone (NEEDS_CSUM: complete the checksum summed from
# csum_start into csum_start + csum_offset; gso_type/gso_size: a super-frame of segments of
# gso_size payload bytes); TX asks the kernel to do it.  Offsets count from the frame start.
VNET_DTYPE = np.dtype(
    [
        ("flags", "u1"),
        ("gso_type", "u1"),
        ("hdr_len", "<u2"),
        ("gso_size", "<u2"),
        ("csum_start", "<u2"),
        ("csum_offset", "<u2"),
    ],
    align=False,
)
assert VNET_DTYPE.itemsize == 10

# flags
F_FRAGMENT = 0x01   # a fragment (first or not); ports are 0
F_VLAN = 0x02       # at least one 802.1Q / 802.1ad tag
F_ECHO = 0x04       # ICMP/ICMPv6 echo request/reply; sport = identifier
F_L4 = 0x08         # the L4 header was reached and ports are valid

# ---------------------------------------------------------------- reason codes
# (code, name, action).  action says what the data path does with the frame:
#   "forward"  - route it (OK, or a note that does not stop forwarding)
#   "kernel"   - not ours: hand to the host stack (non-IP, ARP, ...)
#   "drop"     - malformed: drop and count
REASONS = [
    (0, "ok", "forward"),
    (1, "truncated_l2", "drop"),          # shorter than the Ethernet/VLAN header
    (2, "not_ip", "kernel"),              # ethertype is neither IPv4 nor IPv6
    (3, "truncated_l3", "drop"),          # IP header or its length fields run past the frame
    (4, "bad_ip_header", "drop"),         # IPv4 IHL < 5, version mismatch, total length < IHL
    (5, "truncated_ext", "drop"),         # an IPv6 extension header runs past the packet
    (6, "opt_overrun", "drop"),           # an option runs past the end of its options header
    (7, "bad_opt_len", "drop"),           # our traffic control option with length != 3
    (8, "hbh_not_first", "drop"),         # hop-by-hop header not directly after the IPv6 header
    (9, "pad_excess", "drop"),            # > 7 consecutive padding bytes (RFC 8504 sec. 5.3)
    (10, "too_many_opts", "drop"),        # > 8 non-padding options in one header (RFC 8504)
    (11, "unknown_nh", "forward"),        # unknown next header: forwarded, keyed without ports
    (12, "truncated_l4", "drop"),         # TCP/UDP/ICMP header runs past the packet
    (13, "too_many_ext", "drop"),         # extension-header chain longer than the walk limit
    (14, "no_uplink", "drop"),            # selection: no usable uplink (set by the pipeline)
    (15, "hop_limit", "drop"),            # hop limit/TTL exhausted (set by the datapath)
    (16, "oversize", "drop"),             # larger than the egress MTU (packet too big sent)
    (17, "no_neighbour", "drop"),         # the next hop's MAC is not known (yet)
    (18, "bad_offload", "drop"),          # a checksum request pointing outside the frame
    # RFC 8200 4.2: an unrecognised hop-by-hop option whose two high-order type bits say
    # discard (row opt_off = where its type byte is; engine/ref/parse.py, pyx/parse.pyx)
    (19, "opt_unknown_discard", "drop"),  # bits 01, or 11 to a multicast destination: silently
    (20, "opt_unknown_icmp", "drop"),     # bits 10, or 11 to unicast: + ICMPv6 parameter problem
    # source translation per uplink (pyx/nat.pyx; [[uplink]] nat, nat6)
    (21, "nat_unsolicited", "drop"),      # from an uplink to its translated address, no mapping
    (22, "nat_exhausted", "drop"),        # no port or mapping slot left for a new flow
    (23, "nat_untranslatable", "drop"),   # a protocol, ICMP type or address NAPT/NPTv6 cannot map
    (24, "nat_no_address", "drop"),       # the uplink has no IPv4 address to translate to (yet)
    # the stateful edge (pyx/edge.pyx; [[uplink]] edge, [engine] routed_prefixes, edge_capacity)
    (25, "edge_unsolicited", "drop"),     # from an uplink to the LAN, no flow the LAN started
    (26, "edge_full", "drop"),            # a new flow out and the edge's table is full
]
REASON_NAMES = [name for _, name, _ in REASONS]
REASON_ACTION = {code: action for code, _, action in REASONS}
REASON_CODE = {name: code for code, name, _ in REASONS}
N_REASONS = len(REASONS)
REASON_OK = 0
REASON_TRUNCATED_L2 = 1
REASON_NOT_IP = 2
REASON_TRUNCATED_L3 = 3
REASON_BAD_IP_HEADER = 4
REASON_TRUNCATED_EXT = 5
REASON_OPT_OVERRUN = 6
REASON_BAD_OPT_LEN = 7
REASON_HBH_NOT_FIRST = 8
REASON_PAD_EXCESS = 9
REASON_TOO_MANY_OPTS = 10
REASON_UNKNOWN_NH = 11
REASON_TRUNCATED_L4 = 12
REASON_TOO_MANY_EXT = 13
REASON_NO_UPLINK = 14
REASON_HOP_LIMIT = 15
REASON_OVERSIZE = 16
REASON_NO_NEIGHBOUR = 17
REASON_BAD_OFFLOAD = 18
REASON_OPT_UNKNOWN_DISCARD = 19
REASON_OPT_UNKNOWN_ICMP = 20
REASON_NAT_UNSOLICITED = 21
REASON_NAT_EXHAUSTED = 22
REASON_NAT_UNTRANSLATABLE = 23
REASON_NAT_NO_ADDRESS = 24
REASON_EDGE_UNSOLICITED = 25
REASON_EDGE_FULL = 26

# RFC 8504 section 5.3 limits applied to the hop-by-hop and destination options headers
MAX_PAD_BYTES = 7          # consecutive padding bytes (Pad1 and PadN together)
MAX_OPTIONS = 8            # non-padding options per header
MAX_EXT_HEADERS = 16       # extension headers walked before giving up

# ---------------------------------------------------------------- traffic control option
DEFAULT_OPTION_TYPE = 0x3E    # 001 11110: RFC 4727 experimental value with the draft's 001 prefix
OPTION_DATA_LEN = 3           # service type u8 + preference u16 (network order)
# hop-by-hop options mmr recognises besides Pad1, PadN and the traffic control option: they
# are passed on untouched, whatever their action bits (RFC 8200 4.2 acts on unrecognised ones)
OPT_ROUTER_ALERT = 0x05       # RFC 2711: for routers that run the protocol (MLD, RSVP): mmr does not
OPT_JUMBO = 0xC2              # RFC 2675: jumbogram; its payload length is bounded by the frame

# ---------------------------------------------------------------- service classes (draft sec. 3)
SERVICE_DATA = 0
SERVICE_CONTROL = 1
SERVICE_VOIP = 2
SERVICE_VIDEO = 3
SERVICE_NAMES = ["data", "control", "voip", "video"]
SERVICE_CODE = {name: i for i, name in enumerate(SERVICE_NAMES)}
N_SERVICES = 4

# ---------------------------------------------------------------- preferences (draft sec. 4.2)
PREF_NONE = 0
PREF_MAX_THROUGHPUT = 1
PREF_QOS = 2
PREF_LOAD_BALANCE = 3

# ---------------------------------------------------------------- uplink characteristics
# Order is the column order of the characteristics matrix.  "benefit" columns normalise as
# x / max(x); "cost" columns as 1 - x / max(x); 1 for every uplink when max is 0.
CHARACTERISTICS = [
    ("bandwidth", "bandwidth_mbps", "benefit"),
    ("loss", "loss", "cost"),
    ("queueing_delay", "queueing_delay_ms", "cost"),
    ("jitter", "jitter_ms", "cost"),
    ("qos", "qos", "benefit"),
    ("security", "security", "benefit"),
    ("power", "power_mw", "cost"),
    ("cost", "cost", "cost"),
]
CHAR_NAMES = [c[0] for c in CHARACTERISTICS]
CHAR_INDEX = {c[0]: i for i, c in enumerate(CHARACTERISTICS)}
CHAR_BENEFIT = np.array([c[2] == "benefit" for c in CHARACTERISTICS], dtype=np.uint8)
N_CHARS = len(CHARACTERISTICS)

# IP protocol numbers: from <netinet/in.h>, through the compiled engine._kernel
from engine import _kernel as _K  # noqa: E402

IPPROTO_HOPOPTS = _K.IPPROTO_HOPOPTS
IPPROTO_ICMP = _K.IPPROTO_ICMP
IPPROTO_TCP = _K.IPPROTO_TCP
IPPROTO_UDP = _K.IPPROTO_UDP
IPPROTO_ROUTING = _K.IPPROTO_ROUTING
IPPROTO_FRAGMENT = _K.IPPROTO_FRAGMENT
IPPROTO_ESP = _K.IPPROTO_ESP
IPPROTO_AH = _K.IPPROTO_AH
IPPROTO_ICMPV6 = _K.IPPROTO_ICMPV6
IPPROTO_NONE = _K.IPPROTO_NONE
IPPROTO_DSTOPTS = _K.IPPROTO_DSTOPTS

# resolvers pinned to their uplinks ([[uplink]] dns and RDNSS): a linear scan per new flow
MAX_RESOLVERS = 64
