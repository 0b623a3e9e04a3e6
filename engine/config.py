"""The policy file: the draft's "non-volatile storage", in TOML.

Takes   a path (or None: the built-in ``engine/default.toml``).
Emits   a validated ``Config``.
Errors  every mistake ends in ``ConfigError``: one sentence naming the file, the key path
        (``uplink[2].loss``, ``policy.7.flow``) and the fix.  The CLI prints it, exit 2.

Validation is table-driven: ``ENGINE_KEYS`` / ``UPLINK_KEYS`` / ``RULE_KEYS`` /
``POLICY_KEYS`` say, per key, its type, range, default and a hint.
"""
from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from engine import constants as C
from engine.errors import ConfigError

MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
DEV_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


@dataclass(frozen=True)
class Key:
    kind: str                 # "int", "float", "bool", "str", "device", "prefixes", "addr", "mac"
    default: object = None    # None: required unless optional
    lo: float | None = None
    hi: float | None = None
    optional: bool = False
    hint: str = ""


ENGINE_KEYS = {
    "lan": Key("device", "lan0", hint='a device name such as "lan0"'),
    "lan_prefixes": Key("prefixes", [],          # [] (the default): learned from the LAN device
                        hint='a list of prefixes such as ["2001:db8:1::/64"] (leave it out to take '
                             'the networks of the LAN device\'s addresses)'),
    "routed_prefixes": Key("prefixes", [],
                           hint='a list of LAN prefixes open to connections from outside, such as '
                                '["2001:db8:1:8::/64"] (leave it out: only replies to the LAN\'s own '
                                'flows get in)'),
    "edge_capacity": Key("int", 65536, 1, 1 << 24,
                         hint="the flows the stateful edge tracks, 1 to 16777216, e.g. 65536"),
    "option_type": Key("int", C.DEFAULT_OPTION_TYPE, 0x20, 0x3F,
                       hint="an option type of the form 001xxxxx: 0x20..0x3F (default 0x3E)"),
    "flow_capacity": Key("int", 65536, 1, 1 << 26, hint="a flow count from 1 to 67108864"),
    "idle_timeout_s": Key("float", 120.0, 0.001, 86400 * 365, hint="seconds, e.g. 120"),
    "default_preference": Key("int", 0, 0, 65535, hint="a preference 0..65535"),
    "busy_poll_ms": Key("float", 1000.0, 0, 60000,
                        hint="milliseconds mmr keeps polling after the last frame before it sleeps, "
                             "e.g. 1000 (0: sleep at once; saves a core, costs latency)"),
    "nat_ports": Key("str", "auto", hint='the ports translated flows take on the uplinks\' addresses: "auto" '
                                         '(1024-65535 without the kernel\'s ip_local_port_range) or a range such '
                                         'as "20000-29999"'),
    "ring_frames": Key("int", 8192, 256, 1 << 20,
                       hint="frames a receive ring holds per device, e.g. 8192 (2 KiB each at MTU 1500)"),
    "workers": Key("int", None, 1, 64, optional=True,
                   hint="forwarding threads, 1 to 64, e.g. 2 (default: the CPUs mmr may use, at most "
                        "the smallest RX queue count of its devices)"),
    "uplink_slots": Key("int", None, 1, 254, optional=True,
                        hint="how many uplinks mmr run or mmr host can hold without a restart (mmr "
                             "reload adds uplinks into free slots), 1 to 254, e.g. 8 (default: the "
                             "uplinks and two more, at least 4)"),
}

UPLINK_KEYS = {
    "name": Key("str", hint='a short unique name such as "ar1"'),
    "device": Key("device", hint='the uplink device such as "up1"'),
    "gateway": Key("str", "auto", hint='"auto" (the next hop of the kernel\'s default route on the device: '
                                       'DHCP, RA, PPP) or an address such as "fe80::1"'),
    "gateway4": Key("str", optional=True, hint='"auto" (the next hop of the kernel\'s IPv4 default route on '
                                               'the device) or an address such as "198.18.1.1"'),
    "gateway6": Key("str", optional=True, hint='"auto" (the next hop of the kernel\'s IPv6 default route on '
                                               'the device) or an address such as "fe80::1"'),
    "gateway_mac": Key("mac", optional=True, hint='a MAC such as "02:00:00:00:00:01"'),
    "bandwidth_mbps": Key("float", 0.0, 0, 1e7, hint="megabits per second, >= 0"),
    "loss": Key("float", 0.0, 0, 1, hint="a loss rate between 0 and 1"),
    "queueing_delay_ms": Key("float", 0.0, 0, 1e7, hint="milliseconds, >= 0"),
    "jitter_ms": Key("float", 0.0, 0, 1e7, hint="milliseconds, >= 0"),
    "qos": Key("float", 0.0, 0, 1, hint="0 (no QoS) to 1 (full QoS support)"),
    "security": Key("float", 0.0, 0, 1, hint="0 (none) to 1 (full protection)"),
    "power_mw": Key("float", 0.0, 0, 1e9, hint="milliwatts, >= 0"),
    "cost": Key("float", 0.0, 0, 1e12, hint="a cost figure, >= 0"),
    "metric": Key("int", None, 0, 1 << 31, optional=True, hint="an integer >= 0 (lower = primary)"),
    "usable": Key("bool", True, hint="true or false"),
    "weight": Key("float", None, 0, 1e9, optional=True,
                  hint="a share of the load-balanced flows, a number >= 0 such as 3 "
                       "(0: none; default: bandwidth_mbps)"),
    "qdisc_bypass": Key("bool", True, hint="true (fastest) or false (mmr's packets go through the "
                                           "device's qdisc: a shaper applies and its backlog is measured)"),
    "dns": Key("addrs", [], hint='the resolvers this uplink\'s network gave, e.g. ["2001:db8:a1::53", '
                                 '"198.18.1.53"]: flows to them leave through this uplink'),
    "probe_targets": Key("addrs", None, optional=True,
                         hint='addresses to ping out of this uplink, e.g. ["2001:db8:a1::1"] (default: the gateway)'),
    "reliability": Key("int", 1, 1, 1000,
                       hint="how many of the uplink's probe targets must answer for a probe round to count, e.g. 1"),
    "strip_option": Key("bool", False, hint="true (the traffic control option is removed before a packet "
                                            "leaves on this uplink: the edge of the option's domain) or false"),
    "nat": Key("str", "auto", hint='"auto" (translate IPv4 sources in private space: RFC 1918, 100.64/10; '
                                   'mmr host: every IPv4 source from the VI), "masquerade" (every IPv4 '
                                   'source) or "none"'),
    "nat6": Key("str", "none", hint='"npt" (RFC 6296 prefix translation to npt_prefix), "masquerade" '
                                    '(NAPT66: every IPv6 source to the uplink\'s own address) or "none"'),
    "edge": Key("str", "stateful", hint='"stateful" (from this uplink only replies to the LAN\'s flows and '
                                        'routed_prefixes get in) or "open" (everything to the LAN: a routed setup)'),
    "npt_prefix": Key("str", None, optional=True,
                      hint='"auto" (the uplink\'s own on-link prefix of the LAN prefix\'s length, answered '
                           'for by proxy neighbour discovery) or the prefix the LAN\'s IPv6 prefix maps to, '
                           'routed to this router by the ISP (e.g. a delegated "2001:db8:a1:100::/64"), '
                           'as long as the LAN prefix'),
}
NAT_MODES = {"none": 0, "auto": 1, "masquerade": 2}
# what nat = "auto" translates (RFC 1918, RFC 6598's shared space)
PRIVATE4 = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")]


def napt44(up, to) -> bool:
    """Whether uplink up translates a forward to LAN address to with NAPT44 (mmr run)."""
    return to.version == 4 and (up.nat == "masquerade" or (up.nat == "auto" and any(to in n for n in PRIVATE4)))

# The connection manager (engine/connmgr.py): link state, probes, failover, control socket.
MONITOR_KEYS = {
    "probes": Key("bool", True, hint="true or false"),
    "probe_interval_ms": Key("float", 200.0, 10, 600000, hint="milliseconds between probes, e.g. 200"),
    "probe_timeout_ms": Key("float", 1000.0, 1, 600000,
                            hint="the longest a probe may take, ms (the timeout adapts: 3 x mean RTT, at least 250 ms)"),
    "down_after": Key("int", 3, 1, 1000, hint="consecutive lost probes before an uplink is down, e.g. 3"),
    "up_after": Key("int", 3, 1, 1000, hint="consecutive answered probes before it is up again, e.g. 3"),
    "hold_down_s": Key("float", 3.0, 0, 86400, hint="seconds an uplink stays down at least, e.g. 3"),
    "window": Key("int", 20, 2, 100000, hint="probes in the sliding window for loss and jitter, e.g. 20"),
    "measure": Key("strs", [], hint='characteristics to measure: any of ["loss", "jitter", "queueing_delay"]'),
    "smoothing": Key("float", 0.3, 0.001, 1, hint="weight of a new measurement, 0 < x <= 1, e.g. 0.3"),
    "failback": Key("str", "stay", hint='"stay" (flows stay where they were moved) or "return"'),
    "failback_hold_s": Key("float", 10.0, 0, 86400, hint="seconds an uplink must be up before flows return"),
    "control_socket": Key("str", "@mmr", hint='"@name" (abstract, per network namespace) or a path'),
    "control_read_group": Key("str", "", hint='a group, e.g. "mmr-monitor", whose members may read status, '
                                              'flows and the configuration (leave it out: root only)'),
    "metrics_listen": Key("str", "", hint='"" (off) or "127.0.0.1:9464" for Prometheus metrics'),
    "degraded_rtt_ms": Key("float", 0.0, 0, 600000,
                           hint="the mean probe RTT in ms above which a usable uplink is degraded, e.g. 150 (0: off)"),
    "recovered_rtt_ms": Key("float", 0.0, 0, 600000,
                            hint="the mean probe RTT in ms a degraded uplink must get below, less than degraded_rtt_ms "
                                 "(0: 0.8 x degraded_rtt_ms)"),
    "degraded_loss": Key("float", 0.0, 0, 1, hint="a probe loss ratio above which a usable uplink is degraded, e.g. 0.1 (0: off)"),
    "recovered_loss": Key("float", 0.0, 0, 1,
                          hint="a probe loss ratio a degraded uplink must get below, less than degraded_loss "
                               "(0: 0.8 x degraded_loss)"),
    "hook": Key("path", "", hint='"" (none) or the absolute path of an executable run on uplink events, '
                                 'e.g. "/etc/mmr/hook"'),
    "hook_timeout_s": Key("float", 10.0, 0.1, 3600, hint="seconds a hook may run before it is killed, e.g. 10"),
}
MEASURABLE = ("loss", "jitter", "queueing_delay")
# [monitor] keys an [[uplink]] may set for itself (unset there: the [monitor] value)
UPLINK_MONITOR_KEYS = ("probes", "probe_interval_ms", "probe_timeout_ms", "down_after", "up_after", "hold_down_s",
                       "window", "degraded_rtt_ms", "recovered_rtt_ms", "degraded_loss", "recovered_loss", "hook",
                       "hook_timeout_s")
UPLINK_KEYS.update({k: Key(MONITOR_KEYS[k].kind, None, MONITOR_KEYS[k].lo, MONITOR_KEYS[k].hi, True,
                           MONITOR_KEYS[k].hint) for k in UPLINK_MONITOR_KEYS})

# Host mode (mmr host): the virtual interface of draft-hong-mif.
HOST_KEYS = {
    "vi": Key("device", "vi0", hint='a device name for the TUN device, e.g. "vi0"'),
    "addresses": Key("strs", ["2001:db8:99::10/128"],
                     hint='the VI\'s stable addresses with length, e.g. ["2001:db8:99::10/128"]'),
    "routes": Key("strs", ["default"], hint='prefixes routed via the VI, e.g. ["default"] or ["2001:db8::/32"]'),
    "route_metric": Key("int", 10, 0, 1 << 31, hint="a route metric, e.g. 10 (lower wins)"),
    "mtu": Key("int", 0, 0, 65535, hint="0 (the smallest interface MTU) or a number of bytes"),
}

# Selection of new flows beyond the metric (pyx/select.pyx).
SELECT_KEYS = {
    "sticky_s": Key("float", 0.0, 0, 86400 * 365,
                    hint="seconds a source address keeps the uplink of its last load-balanced "
                         "flow, e.g. 600 (0: off)"),
}

POLICY_KEYS = {
    "name": Key("str", "", hint='a name such as "cheap"'),
    "network": Key("list", hint='characteristic names, e.g. ["bandwidth", "loss"]'),
    "flow": Key("list", hint='class parameters or numbers, e.g. ["packet_size", 1.0]'),
}

RULE_MATCH = ("proto", "sport", "dport", "src", "dst", "dscp")
RULE_SET = ("service", "preference", "uplink")
PIN_BASE = 65535      # a rule's uplink = NAME uses the reserved preference PIN_BASE - index
# (an option asking for a preference a pin uses is not honoured: pyx/classify.pyx)
TRUST_KEYS = ("src", "services", "preferences")
FORWARD_KEYS = ("proto", "port", "to", "to_port", "uplinks")
MAX_FORWARDS = 64
MAX_TRUST = 1024
PROTO_NAMES = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "udplite": 136,
               "gre": 47, "esp": 50}
DSCP_NAMES = {"CS0": 0, "CS1": 8, "AF11": 10, "AF12": 12, "AF13": 14, "CS2": 16, "AF21": 18,
              "AF22": 20, "AF23": 22, "CS3": 24, "AF31": 26, "AF32": 28, "AF33": 30, "CS4": 32,
              "AF41": 34, "AF42": 36, "AF43": 38, "CS5": 40, "EF": 46, "CS6": 48, "CS7": 56,
              "BE": 0, "VA": 44, "LE": 1}

BUILTIN_CLASSES = {
    "packet_size": (1.0, 0.1, 0.5, 1.0),   # data, control, voip, video (draft 5.1)
    "needs_qos": (0.0, 0.0, 1.0, 1.0),     # draft 5.3
    "v": (1.0, 1.0, 1.0, 1.0),             # loss coordination value of draft 5.1
}


@dataclass
class Policy:
    number: int
    name: str
    network: list[str]
    flow: list            # class parameter names (str) or constants (float)
    pin: int | None = None   # this uplink only (RFC 6419 per-application policy), else none


BUILTIN_POLICIES = {
    0: Policy(0, "none", [], []),
    1: Policy(1, "max-throughput", ["bandwidth", "loss"], ["packet_size", "v"]),
    2: Policy(2, "qos-load-balancing", ["qos", "queueing_delay"], ["needs_qos", 1.0]),
    3: Policy(3, "load-balancing", ["queueing_delay"], [1.0]),
}


@dataclass
class Uplink:
    name: str
    device: str
    gateway: str | None
    gateway_mac: str | None
    chars: dict[str, float]
    metric: int
    usable: bool = True
    probe_targets: list[str] = field(default_factory=list)
    qdisc_bypass: bool = True
    weight: float | None = None   # share of load-balanced flows; None: bandwidth_mbps
    reliability: int = 1                                   # targets that must answer per probe round
    overrides: dict = field(default_factory=dict)          # [monitor] keys this [[uplink]] sets itself
    monitor: dict = field(default_factory=dict)            # its effective probe/degraded/hook settings
    strip_option: bool = False                             # remove the traffic control option on the way out
    nat: str = "auto"                                      # IPv4 source translation: auto, masquerade, none
    nat6: str = "none"                                     # IPv6: npt, masquerade or none
    npt_prefix: ipaddress.IPv6Network | None = None        # nat6 = "npt" and None: "auto" (the uplink's own)
    gateway4: str | None = None                            # the IPv4 next hop's address; None: auto
    gateway6: str | None = None                            # the IPv6 next hop's; None: auto
    dns: list[str] = field(default_factory=list)           # resolvers pinned to this uplink (RFC 6419 2.3.1)
    edge: str = "stateful"                                 # the stateful edge: stateful or open
    empty: bool = False                                    # a free uplink slot (engine/slots.py), never usable


@dataclass
class Rule:
    index: int
    proto: int | None = None
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    src: ipaddress.IPv6Network | None = None
    dst: ipaddress.IPv6Network | None = None
    dscp: int | None = None
    service: int | None = None
    preference: int | None = None
    pin: bool = False          # uplink = NAME: applies to tagged traffic too ("only via")


@dataclass
class Forward:
    """[[forward]]: new connections from outside to port (a range: lo..hi) reach to:to_port."""
    index: int
    proto: int                                  # 6 or 17
    ports: tuple[int, int]
    to: ipaddress.IPv4Address | ipaddress.IPv6Address
    to_port: int                                # the first port of the range on the LAN host
    uplinks: tuple[int, ...]                    # uplink indexes it opens on


@dataclass
class Trust:
    """[[trust]]: what an option from a LAN source prefix may ask for."""
    index: int
    src: ipaddress.IPv6Network
    services: tuple[int, ...] = (0, 1, 2, 3)                  # service codes it may request
    preferences: tuple[tuple[int, int], ...] = ((0, 65535),)  # inclusive ranges, sorted, merged


@dataclass
class Config:
    path: str
    lan: str = "lan0"
    lan_prefixes: list = field(default_factory=list)
    lan_prefixes_learned: bool = False      # none configured: the LAN device's own, followed
    nat_ports: str | tuple | None = "auto"  # parsed: None (auto) or (low, high)
    routed_prefixes: list = field(default_factory=list)    # LAN prefixes open to unsolicited inbound
    edge_capacity: int = 65536
    option_type: int = C.DEFAULT_OPTION_TYPE
    flow_capacity: int = 65536
    idle_timeout_s: float = 120.0
    default_preference: int = 0
    busy_poll_ms: float = 1000.0
    ring_frames: int = 8192
    workers: int | None = None          # None: engine.workers.default_workers()
    uplink_slots: int | None = None     # None: engine.slots.default_slots()
    uplinks: list[Uplink] = field(default_factory=list)
    classes: dict[str, tuple] = field(default_factory=dict)
    policies: dict[int, Policy] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    trust: list[Trust] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)
    monitor: dict = field(default_factory=dict)
    host: dict = field(default_factory=dict)
    select: dict = field(default_factory=lambda: {"sticky_s": 0.0})
    raw: dict = field(default_factory=dict)
    tags: list = field(default_factory=list)     # [[tag]] rules (engine.tagger.TagRule) for mmr tag

    def pin_preferences(self) -> dict[int, int]:
        """Preference number -> uplink index of every pin: reserved for rules, never an option's."""
        return {n: p.pin for n, p in self.policies.items() if p.pin is not None}

    def uplink_index(self, name: str) -> int:
        for i, u in enumerate(self.uplinks):
            if u.name == name:
                return i
        raise KeyError(name)


def default_config_path() -> str:
    return str(resources.files("engine").joinpath("default.toml"))


def characteristics_matrix(cfg: Config) -> np.ndarray:
    """float64[n_uplinks, N_CHARS] in engine.constants.CHARACTERISTICS column order."""
    m = np.zeros((len(cfg.uplinks), C.N_CHARS), dtype=np.float64)
    for i, u in enumerate(cfg.uplinks):
        for j, name in enumerate(C.CHAR_NAMES):
            m[i, j] = u.chars[name]
    return m


def to_mapped(net) -> ipaddress.IPv6Network:
    """IPv4 prefixes become IPv4-mapped IPv6 prefixes (::ffff:0:0/96 + plen)."""
    if isinstance(net, ipaddress.IPv4Network):
        return ipaddress.IPv6Network(
            (int(ipaddress.IPv6Address("::ffff:0:0")) | int(net.network_address), 96 + net.prefixlen)
        )
    return net


def _short(v) -> str:
    """A value as an error message may show it: long ones cut."""
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


MAX_FILE = 1 << 20          # bytes of a policy file
MAX_NESTING = 32            # brackets / braces inside one another, dotted table-header parts


def _nesting(text: str) -> int:
    """The deepest nesting of [ ] and { } outside strings and comments, and the most parts
    of a dotted table header: a file deeper than any policy needs is refused before the TOML
    parser recurses into it."""
    depth = deepest = 0
    i, n = 0, len(text)
    at_line_start = True
    while i < n:
        c = text[i]
        if c in "\"'":
            q = text[i:i + 3] if text[i:i + 3] in ('"""', "'''") else c
            j = text.find(q, i + len(q))
            while q == '"' and j > 0 and text[j - 1] == "\\":
                j = text.find(q, j + 1)
            i = n if j < 0 else j + len(q)
            at_line_start = False
            continue
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c == "\n":
            at_line_start = True
        elif c in "[{":
            if c == "[" and at_line_start:
                end = text.find("\n", i)
                deepest = max(deepest, text[i:end if end > 0 else n].count(".") + 1)
            depth += 1
            deepest = max(deepest, depth)
            at_line_start = False
        elif c in "]}":
            depth = max(0, depth - 1)
        elif not c.isspace():
            at_line_start = False
        i += 1
    return deepest


# ------------------------------------------------------------------------------- loading
class _Loader:
    def __init__(self, path: str):
        self.path = path

    def service_and_preference(self, where: str, t: dict, r) -> None:
        """``service`` and ``preference`` of a [[rule]] or [[tag]] into r.service, r.preference."""
        if "service" in t:
            s = t["service"]
            if not isinstance(s, str) or s not in C.SERVICE_CODE:
                self.err(f"{where}.service", f"{_short(s)} is not a service class",
                         "write data, control, voip or video")
            r.service = C.SERVICE_CODE[s]
        if "preference" in t:
            p = t["preference"]
            if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 65535:
                self.err(f"{where}.preference", f"{_short(p)} is not a preference", "write an integer 0..65535")
            r.preference = p

    def err(self, key, problem, fix):
        raise ConfigError(self.path, key, problem, fix)

    def unknown(self, table: dict, allowed, where: str):
        for k in table:
            if k not in allowed:
                near = ", ".join(sorted(allowed))
                if len(near) > 240:               # a long table: the nearest names, if any are near
                    import difflib
                    close = difflib.get_close_matches(str(k)[:100], list(allowed), 3, 0.7)
                    near = ", ".join(close) + " (the nearest keys)" if close else near
                self.err(f"{where}.{k}" if where else k, "unknown key",
                         f"remove it or use one of: {near}")

    def value(self, key: str, spec: Key, v):
        kind = spec.kind
        if kind == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                self.err(key, f"must be an integer, got {type(v).__name__} {_short(v)}", f"write {spec.hint}")
        elif kind == "float":
            v = self.number(key, v, f"write {spec.hint}")
        elif kind == "bool":
            if not isinstance(v, bool):
                self.err(key, f"must be true or false, got {_short(v)}", "write true or false")
        elif kind == "path":
            if not isinstance(v, str):
                self.err(key, f"must be a string, got {_short(v)}", f"write {spec.hint}")
        elif kind in ("str", "device", "addr", "mac"):
            if not isinstance(v, str) or not v:
                self.err(key, f"must be a non-empty string, got {_short(v)}", f"write {spec.hint}")
            if kind == "device" and not DEV_RE.match(v):
                self.err(key, f"{_short(v)} is not a valid device name (1-15 characters, no spaces or '/')",
                         f"write {spec.hint}")
            if kind == "addr":
                try:
                    v = str(ipaddress.ip_address(v.split("%")[0]))
                except ValueError:
                    self.err(key, f"{_short(v)} is not an IPv6 or IPv4 address", f"write {spec.hint}")
            if kind == "mac" and not MAC_RE.match(v):
                self.err(key, f"{_short(v)} is not a MAC address", f"write {spec.hint}")
        elif kind == "prefixes":
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                self.err(key, "must be a list of prefix strings", f"write {spec.hint}")
            out = []
            for i, x in enumerate(v):
                out.append(self.prefix(f"{key}[{i}]", x))
            v = out
        elif kind == "list":
            if not isinstance(v, list) or not v:
                self.err(key, "must be a non-empty list", f"write {spec.hint}")
        elif kind in ("addrs", "strs"):
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                self.err(key, "must be a list of strings", f"write {spec.hint}")
            if kind == "addrs":
                out = []
                for x in v:
                    try:
                        out.append(str(ipaddress.ip_address(x)))
                    except ValueError:
                        self.err(key, f"{_short(x)} is not an IPv6 or IPv4 address", f"write {spec.hint}")
                v = out
        if kind in ("int", "float"):
            if spec.lo is not None and v < spec.lo or spec.hi is not None and v > spec.hi:
                self.err(key, f"{_short(v)} is out of range", f"write {spec.hint}")
        return v

    def number(self, key, v, fix: str) -> float:
        """A finite number (an integer too large for a float is out of range, not a crash)."""
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.err(key, f"must be a number, got {type(v).__name__} {_short(v)}", fix)
        if isinstance(v, int) and v.bit_length() > 1000:
            self.err(key, f"{_short(v)} is out of range", fix)
        v = float(v)
        if not math.isfinite(v):
            self.err(key, f"must be a finite number, got {v}", fix)
        return v

    def prefix(self, key, text):
        if not isinstance(text, str):
            self.err(key, f"must be a prefix string, got {_short(text)}", 'write e.g. "2001:db8::/32"')
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            self.err(key, f"{_short(text)} is not a valid prefix ({exc})",
                     'write the network address and length, e.g. "2001:db8::/32"')

    def table(self, t, keys: dict, where: str) -> dict:
        if not isinstance(t, dict):
            self.err(where, f"must be a table, got {type(t).__name__}", f"write [{where}] with keys")
        self.unknown(t, keys, where)
        out = {}
        for k, spec in keys.items():
            key = f"{where}.{k}" if where else k
            if k in t:
                out[k] = self.value(key, spec, t[k])
            elif spec.default is None and not spec.optional:
                self.err(key, "is missing", f"add {k} = {spec.hint}")
            elif spec.kind == "prefixes":     # defaults are text too: parse them the same way
                out[k] = [self.prefix(key, x) for x in spec.default]
            else:
                out[k] = spec.default
        return out

    # ----------------------------------------------------------------------------
    def load(self, text: str) -> Config:
        if len(text) > MAX_FILE:
            self.err(None, f"is {len(text)} characters long, more than a policy file needs",
                     f"keep it under {MAX_FILE} bytes")
        if _nesting(text) > MAX_NESTING:
            self.err(None, f"nests tables or arrays more than {MAX_NESTING} deep",
                     "write a flat policy file (see 'mmr config --show')")
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            self.err(None, f"is not valid TOML ({exc})", "fix the syntax at that line")
        except RecursionError:
            self.err(None, "nests tables or arrays too deeply", "write a flat policy file")
        self.unknown(raw, ("engine", "uplink", "classes", "policy", "rule", "monitor", "host",
                          "select", "trust", "tag", "forward"), "")
        eng = self.table(raw.get("engine", {}), ENGINE_KEYS, "engine")
        cfg = Config(path=self.path, raw=raw, **eng)
        cfg.lan_prefixes = eng["lan_prefixes"]
        cfg.lan_prefixes_learned = not cfg.lan_prefixes
        ports = eng["nat_ports"]
        cfg.nat_ports = None
        if ports != "auto":
            m = re.fullmatch(r"([0-9]{1,5})-([0-9]{1,5})", ports)
            lo, hi = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
            if not m or not 1024 <= lo <= hi <= 65535 or hi - lo < 63:
                self.err("engine.nat_ports", f"{_short(ports)} is not a range of at least 64 ports in 1024-65535",
                         'write e.g. "20000-29999" or "auto"')
            cfg.nat_ports = (lo, hi)
        if len(cfg.lan_prefixes) > 64:
            self.err("engine.lan_prefixes", f"{len(cfg.lan_prefixes)} prefixes is more than mmr takes",
                     "list at most 64 (aggregate them)")
        if len(cfg.routed_prefixes) > 256:
            self.err("engine.routed_prefixes", f"{len(cfg.routed_prefixes)} prefixes is more than mmr takes",
                     "list at most 256 (aggregate them)")
        for net in cfg.routed_prefixes:
            if cfg.lan_prefixes and not any(net.version == p.version and net.subnet_of(p) for p in cfg.lan_prefixes):
                self.err("engine.routed_prefixes", f"{net} is not inside the LAN's lan_prefixes",
                         "write a prefix inside one of " + ", ".join(map(str, cfg.lan_prefixes)))
        self.uplinks(raw, cfg)
        if cfg.uplink_slots is not None and cfg.uplink_slots < len(cfg.uplinks):
            self.err("engine.uplink_slots", f"{cfg.uplink_slots} is fewer than the {len(cfg.uplinks)} uplinks",
                     f"write at least {len(cfg.uplinks)} (or leave it out)")
        self.classes(raw, cfg)
        self.policies(raw, cfg)
        self.rules(raw, cfg)
        self.trust(raw, cfg)
        self.forwards(raw, cfg)
        self.monitor(raw, cfg)
        self.host(raw, cfg)
        cfg.select = self.table(raw.get("select", {}), SELECT_KEYS, "select")
        if "tag" in raw:               # [[tag]]: mmr tag's rules (validated in engine/tagger.py)
            from engine.tagger import load_tags
            cfg.tags = load_tags(self, raw)
        return cfg

    def host(self, raw, cfg):
        h = self.table(raw.get("host", {}), HOST_KEYS, "host")
        if not h["addresses"]:
            self.err("host.addresses", "is empty", "give the virtual interface at least one address")
        for i, a in enumerate(h["addresses"]):
            try:
                ipaddress.ip_interface(a)
            except ValueError:
                self.err(f"host.addresses[{i}]", f"{_short(a)} is not an address with length",
                         'write e.g. "2001:db8:99::10/128"')
            if "/" not in a:
                self.err(f"host.addresses[{i}]", f"{_short(a)} has no length", 'write e.g. "2001:db8:99::10/128"')
        for i, r in enumerate(h["routes"]):
            if r != "default":
                self.prefix(f"host.routes[{i}]", r)
        if h["vi"] in [u.device for u in cfg.uplinks]:
            self.err("host.vi", f"{h['vi']!r} is an uplink device", "name the virtual interface differently")
        cfg.host = h

    def monitor(self, raw, cfg):
        m = self.table(raw.get("monitor", {}), MONITOR_KEYS, "monitor")
        for x in m["measure"]:
            if x not in MEASURABLE:
                self.err("monitor.measure", f"{_short(x)} cannot be measured",
                         f"use any of {', '.join(MEASURABLE)}")
        if m["failback"] not in ("stay", "return"):
            self.err("monitor.failback", f"{m['failback']!r} is not a failback policy", 'write "stay" or "return"')
        if m["probe_timeout_ms"] < m["probe_interval_ms"] / 10:
            self.err("monitor.probe_timeout_ms", "is shorter than a tenth of the probe interval",
                     "give probes at least probe_interval_ms / 10 to come back")
        ml = m["metrics_listen"]
        if ml:
            host, _, port = ml.rpartition(":")
            if not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
                self.err("monitor.metrics_listen", f"{_short(ml)} is not host:port", 'write e.g. "127.0.0.1:9464"')
        cs = m["control_socket"]
        if not cs or (not cs.startswith("@") and not cs.startswith("/")):
            self.err("monitor.control_socket", f"{_short(cs)} is neither @name nor an absolute path",
                     'write "@mmr" or "/run/mmr/mmr.sock"')
        rg = m["control_read_group"]
        if rg:
            import grp
            try:
                grp.getgrnam(rg)
            except (KeyError, ValueError):       # ValueError: a NUL in the name
                self.err("monitor.control_read_group", f"there is no group {_short(rg)} on this system",
                         "create it with groupadd or name an existing group")
        self.probe_settings(m, "monitor", m)
        for i, u in enumerate(cfg.uplinks):
            u.monitor = {**{k: m[k] for k in UPLINK_MONITOR_KEYS}, **u.overrides}
            self.probe_settings(u.monitor, f"uplink[{i}]", u.overrides)
        cfg.monitor = m

    def probe_settings(self, s: dict, where: str, own: dict):
        """One uplink's effective probe, degraded and hook settings (or [monitor]'s); an error
        names the key where it was written (``own``: the keys ``where`` set itself)."""
        def at(k, *related):
            return f"{where if k in own or any(r in own for r in related) else 'monitor'}.{k}"
        if s["probe_timeout_ms"] < s["probe_interval_ms"] / 10:
            self.err(at("probe_timeout_ms", "probe_interval_ms"), "is shorter than a tenth of the probe interval",
                     "give probes at least probe_interval_ms / 10 to come back")
        for kind, unit in (("rtt_ms", " ms"), ("loss", "")):
            deg, rec = s[f"degraded_{kind}"], s[f"recovered_{kind}"]
            if rec and not deg:
                self.err(at(f"recovered_{kind}"), f"is set but degraded_{kind} is not",
                         f"set degraded_{kind} too or remove recovered_{kind}")
            if rec and rec >= deg:
                self.err(at(f"recovered_{kind}", f"degraded_{kind}"),
                         f"{_short(rec)}{unit} is not below degraded_{kind} ({_short(deg)}{unit})",
                         f"write a value below {_short(deg)} so that the state does not flap")
        hook = s["hook"]
        if hook:
            if "\x00" in hook:
                self.err(at("hook"), f"{_short(hook)} contains a NUL character", 'write e.g. "/etc/mmr/hook" or ""')
            if not hook.startswith("/"):
                self.err(at("hook"), f"{_short(hook)} is not an absolute path", 'write e.g. "/etc/mmr/hook" or ""')
            if not os.path.isfile(hook) or not os.access(hook, os.X_OK):
                self.err(at("hook"), f"{_short(hook)} is not an executable file",
                         'create it and make it executable (chmod +x), or write hook = ""')

    def uplinks(self, raw, cfg):
        ups = raw.get("uplink")
        if ups is None:
            self.err("uplink", "no [[uplink]] table", "add at least one [[uplink]] with name and device")
        if not isinstance(ups, list):
            self.err("uplink", "must be an array of tables", "write each uplink as [[uplink]]")
        if len(ups) > 254:
            self.err("uplink", f"{len(ups)} uplinks is more than mmr supports", "keep at most 254")
        names, devs, resolvers = {}, {}, {}
        for i, t in enumerate(ups):
            where = f"uplink[{i}]"
            v = self.table(t, UPLINK_KEYS, where)
            if v["name"] in names:
                self.err(f"{where}.name", f"duplicate uplink name {v['name']!r} (also uplink[{names[v['name']]}])",
                         "give every uplink its own name")
            if v["device"] in devs:
                self.err(f"{where}.device", f"device {v['device']!r} is already uplink[{devs[v['device']]}]",
                         "give every uplink its own device")
            if v["device"] == cfg.lan:
                self.err(f"{where}.device", f"device {v['device']!r} is the LAN device",
                         "use a different device for the uplink or for engine.lan")
            names[v["name"]] = i
            devs[v["device"]] = i
            if v["gateway"] == "auto" or v["gateway_mac"]:
                v["gateway"] = None if v["gateway"] == "auto" else v["gateway"]
            if v["gateway"] is not None:
                try:
                    v["gateway"] = str(ipaddress.ip_address(v["gateway"].split("%")[0]))
                except ValueError:
                    self.err(f"{where}.gateway", f"{_short(v['gateway'])} is not an IPv6 or IPv4 address",
                             'write "auto" or the next hop address such as "fe80::1"')
            # per family: what gateway4 / gateway6 say, else what gateway says (both families)
            per_family = {}
            for fam, example in ((4, "198.18.1.1"), (6, "fe80::1")):
                g = v[f"gateway{fam}"]
                if g is not None and v["gateway_mac"]:
                    self.err(f"{where}.gateway{fam}", "cannot go with gateway_mac, which serves both families",
                             f"leave out gateway{fam} or gateway_mac")
                if g is None:
                    per_family[fam] = v["gateway"]
                elif g == "auto":
                    per_family[fam] = None
                else:
                    try:
                        per_family[fam] = str(ipaddress.ip_address(g.split("%")[0]))
                    except ValueError:
                        self.err(f"{where}.gateway{fam}", f"{_short(g)} is not an IPv6 or IPv4 address",
                                 f'write "auto" or the IPv{fam} next hop address such as "{example}"')
            chars = {cname: float(v[key]) for cname, key, _ in C.CHARACTERISTICS}
            metric = v["metric"] if v["metric"] is not None else i
            targets = v["probe_targets"] if v["probe_targets"] is not None else (
                [v["gateway"]] if v["gateway"] else list(dict.fromkeys(g for g in (per_family[6], per_family[4]) if g)))
            cfg.uplinks.append(Uplink(v["name"], v["device"], v["gateway"], v["gateway_mac"],
                                      chars, int(metric), bool(v["usable"]), targets, bool(v["qdisc_bypass"])))
            cfg.uplinks[-1].gateway4, cfg.uplinks[-1].gateway6 = per_family[4], per_family[6]
            for a in v["dns"]:          # a resolver answers for the network that gave it: one uplink
                if a in resolvers:
                    self.err(f"{where}.dns", f"{a} is already a resolver of uplink {resolvers[a]!r}",
                             "list each resolver under the uplink whose network gave it, once")
                resolvers[a] = v["name"]
            if len(resolvers) > C.MAX_RESOLVERS:
                self.err(f"{where}.dns", f"{len(resolvers)} resolvers are more than mmr pins",
                         f"list at most {C.MAX_RESOLVERS} in all")
            cfg.uplinks[-1].dns = list(v["dns"])
            cfg.uplinks[-1].weight = v["weight"]
            if v["reliability"] > max(1, len(targets)):
                self.err(f"{where}.reliability", f"{v['reliability']} is more than the {len(targets)} probe "
                         f"target(s) of this uplink", f"write at most {max(1, len(targets))} or list more probe_targets")
            cfg.uplinks[-1].reliability = v["reliability"]
            cfg.uplinks[-1].strip_option = bool(v["strip_option"])
            self.translation(where, v, cfg)
            cfg.uplinks[-1].overrides = {k: v[k] for k in UPLINK_MONITOR_KEYS if v[k] is not None}

    def translation(self, where, v, cfg):
        up = cfg.uplinks[-1]
        if v["nat"] not in NAT_MODES:
            self.err(f"{where}.nat", f"{_short(v['nat'])} is not a NAT mode", 'write "auto", "masquerade" or "none"')
        up.nat = v["nat"]
        if v["nat6"] not in ("npt", "masquerade", "none"):
            self.err(f"{where}.nat6", f"{_short(v['nat6'])} is not an IPv6 translation",
                     'write "npt", "masquerade" or "none"')
        up.nat6 = v["nat6"]
        if v["edge"] not in ("stateful", "open"):
            self.err(f"{where}.edge", f"{_short(v['edge'])} is not an edge mode", 'write "stateful" or "open"')
        up.edge = v["edge"]
        if v["npt_prefix"] is not None and v["npt_prefix"] != "auto":
            net = self.prefix(f"{where}.npt_prefix", v["npt_prefix"])
            if net.version != 6 or net.prefixlen > 64:
                self.err(f"{where}.npt_prefix", f"{net} is not an IPv6 prefix of /64 or shorter",
                         'write "auto" or a prefix such as "2001:db8:a1:100::/64"')
            up.npt_prefix = net
        lans = [p for p in cfg.lan_prefixes if p.version == 6]
        if up.nat6 == "npt" and up.npt_prefix is None and lans and not any(p.prefixlen <= 64 for p in lans):
            self.err(f"{where}.npt_prefix", f'"auto" maps a LAN prefix of /64 or shorter, and the IPv6 LAN '
                     f"prefixes are longer ({', '.join(map(str, lans))})",
                     'list the LAN\'s /64 in engine.lan_prefixes, or write nat6 = "none"')
        if up.nat6 == "npt" and up.npt_prefix is not None:
            if lans and not any(p.prefixlen == up.npt_prefix.prefixlen for p in lans):
                self.err(f"{where}.npt_prefix", f"{up.npt_prefix} is a /{up.npt_prefix.prefixlen}, and no IPv6 LAN "
                         f"prefix is ({', '.join(map(str, lans))})",
                         "give npt_prefix the length of the LAN prefix it stands for (NPTv6 maps prefixes 1:1)")

    def classes(self, raw, cfg):
        cls = dict(BUILTIN_CLASSES)
        t = raw.get("classes", {})
        if not isinstance(t, dict):
            self.err("classes", "must be a table", "write [classes] with name = number or table")
        for name, v in t.items():
            key = f"classes.{name}"
            if isinstance(v, bool):
                self.err(key, f"must be a number or a table of the four classes, got {_short(v)}",
                         "write e.g. 1.0 or { data = 1.0, control = 0.1, voip = 0.5, video = 1.0 }")
            if isinstance(v, (int, float)):
                cls[name] = (self.number(key, v, "write a number such as 0.5"),) * 4
            elif isinstance(v, dict):
                base = list(cls.get(name, (None,) * 4))
                for k, x in v.items():
                    if k not in C.SERVICE_CODE:
                        self.err(f"{key}.{k}", "unknown class", "use data, control, voip or video")
                    base[C.SERVICE_CODE[k]] = self.number(f"{key}.{k}", x, "write a number such as 0.5")
                if None in base:
                    missing = [C.SERVICE_NAMES[i] for i, x in enumerate(base) if x is None]
                    self.err(key, f"has no value for {', '.join(missing)}",
                             "give all four classes: data, control, voip, video")
                cls[name] = tuple(base)
            else:
                self.err(key, f"must be a number or a table of the four classes, got {type(v).__name__}",
                         "write e.g. 1.0 or { data = 1.0, control = 0.1, voip = 0.5, video = 1.0 }")
        cfg.classes = cls

    def policies(self, raw, cfg):
        pol = dict(BUILTIN_POLICIES)
        t = raw.get("policy", {})
        if not isinstance(t, dict):
            self.err("policy", "must be a table of [policy.N] tables", "write [policy.4] ...")
        for num, body in t.items():
            where = f"policy.{num}"
            if not re.fullmatch(r"[0-9]{1,5}", num) or not 0 <= int(num) <= 65535:
                self.err(where, f"{_short(num)} is not a preference number", "name it [policy.N] with N in 4..65535")
            n = int(num)
            if n < 4:
                self.err(where, f"preference {n} is built in (draft section 5)",
                         "use a number from 4 to 65535; tune the built-ins through [classes]")
            v = self.table(body, POLICY_KEYS, where)
            net, flow = v["network"], v["flow"]
            for i, c in enumerate(net):
                if not isinstance(c, str) or c not in C.CHAR_INDEX:
                    self.err(f"{where}.network[{i}]", f"unknown characteristic {_short(c)}",
                             "use one of: " + ", ".join(C.CHAR_NAMES))
            out_flow = []
            for i, f in enumerate(flow):
                if isinstance(f, bool):
                    self.err(f"{where}.flow[{i}]", f"{_short(f)} is not a class parameter or number",
                             "write a number or a name from [classes]")
                if isinstance(f, (int, float)):
                    out_flow.append(self.number(f"{where}.flow[{i}]", f, "write a finite number"))
                elif isinstance(f, str) and f in cfg.classes:
                    out_flow.append(f)
                else:
                    self.err(f"{where}.flow[{i}]", f"unknown class parameter {_short(f)}",
                             "use a number or one of: " + ", ".join(sorted(cfg.classes)))
            if len(net) != len(out_flow):
                self.err(where, f"network has {len(net)} entries but flow has {len(out_flow)}",
                         "give V_n and V_t the same length")
            pol[n] = Policy(n, v["name"] or f"policy-{n}", list(net), out_flow)
        cfg.policies = pol

    def rules(self, raw, cfg):
        rules = raw.get("rule", [])
        if not isinstance(rules, list):
            self.err("rule", "must be an array of tables", "write each rule as [[rule]]")
        for i, t in enumerate(rules):
            where = f"rule[{i}]"
            if not isinstance(t, dict):
                self.err(where, "must be a table", "write each rule as [[rule]]")
            self.unknown(t, RULE_MATCH + RULE_SET, where)
            if not any(k in t for k in RULE_MATCH):
                self.err(where, "matches nothing", "add proto, sport, dport, src, dst or dscp")
            if not any(k in t for k in RULE_SET):
                self.err(where, "sets nothing", "add service, preference and/or uplink")
            r = Rule(i)
            if "proto" in t:
                p = t["proto"]
                if isinstance(p, str) and p.lower() in PROTO_NAMES:
                    r.proto = PROTO_NAMES[p.lower()]
                elif isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 255:
                    r.proto = p
                else:
                    self.err(f"{where}.proto", f"{_short(p)} is not a protocol",
                             "write tcp, udp, icmp, icmpv6, sctp, udplite, gre, esp or a number 0..255")
            for k in ("sport", "dport"):
                if k in t:
                    setattr(r, k, self.port_range(f"{where}.{k}", t[k]))
            for k in ("src", "dst"):
                if k in t:
                    setattr(r, k, to_mapped(self.prefix(f"{where}.{k}", t[k])))
            if "dscp" in t:
                d = t["dscp"]
                if isinstance(d, str) and d.upper() in DSCP_NAMES:
                    r.dscp = DSCP_NAMES[d.upper()]
                elif isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 63:
                    r.dscp = d
                else:
                    self.err(f"{where}.dscp", f"{_short(d)} is not a DSCP", "write 0..63 or a name like EF, AF41, CS6")
            self.service_and_preference(where, t, r)
            if "uplink" in t:
                name = t["uplink"]
                names = [u.name for u in cfg.uplinks]
                if not isinstance(name, str):
                    self.err(f"{where}.uplink", f"{_short(name)} is not an uplink name", f"use one of {', '.join(names)}")
                if "preference" in t:
                    self.err(f"{where}.uplink", "cannot be combined with preference",
                             "a rule either pins an uplink or sets a preference: keep one")
                if name not in names:
                    self.err(f"{where}.uplink", f"{_short(name)} is not an uplink",
                             f"use one of {', '.join(names)}")
                k = names.index(name)
                number = PIN_BASE - k
                if number in cfg.policies and cfg.policies[number].pin is None:
                    self.err(f"{where}.uplink", f"needs preference {number}, which [policy.{number}] uses",
                             f"renumber [policy.{number}] (preferences {PIN_BASE - 254}..{PIN_BASE} pin uplinks)")
                cfg.policies[number] = Policy(number, f"pin-{name}", [], [], pin=k)
                r.preference = number
                r.pin = True
            cfg.rules.append(r)
        pins = cfg.pin_preferences()
        for r in cfg.rules:
            if not r.pin and r.preference in pins:
                self.err(f"rule[{r.index}].preference", f"{r.preference} is reserved for the pin to "
                         f"{cfg.uplinks[pins[r.preference]].name}",
                         f'write uplink = "{cfg.uplinks[pins[r.preference]].name}" to pin, or another preference')
        if cfg.default_preference in pins:
            self.err("engine.default_preference", f"{cfg.default_preference} is reserved for the pin to "
                     f"{cfg.uplinks[pins[cfg.default_preference]].name}",
                     f"write a preference below {PIN_BASE - 254} or use a [[rule]] with uplink")

    def trust(self, raw, cfg):
        """[[trust]] tables: per LAN source prefix, the services and preferences an option
        from it may ask for (longest prefix wins; no match: everything)."""
        tables = raw.get("trust", [])
        if not isinstance(tables, list):
            self.err("trust", "must be an array of tables", "write each as [[trust]]")
        if len(tables) > MAX_TRUST:
            self.err("trust", f"{len(tables)} tables is more than mmr takes", f"keep at most {MAX_TRUST}")
        seen = {}
        for i, t in enumerate(tables):
            where = f"trust[{i}]"
            if not isinstance(t, dict):
                self.err(where, "must be a table", "write each as [[trust]]")
            self.unknown(t, TRUST_KEYS, where)
            if "src" not in t:
                self.err(f"{where}.src", "is missing", 'add src = "2001:db8:1:99::/64" (a LAN prefix)')
            net = self.prefix(f"{where}.src", t["src"])
            if net.version != 6:
                self.err(f"{where}.src", f"{_short(t['src'])} is an IPv4 prefix, and the option is IPv6 only",
                         "write an IPv6 prefix of the LAN")
            lans = [p for p in cfg.lan_prefixes if p.version == 6]
            if not cfg.lan_prefixes_learned and not any(net.subnet_of(p) for p in lans):
                self.err(f"{where}.src", f"{net} is not inside the LAN's lan_prefixes",
                         "write a prefix inside one of " + (", ".join(map(str, lans)) or "engine.lan_prefixes"))
            if net in seen:
                self.err(f"{where}.src", f"{net} is already trust[{seen[net]}]", "merge the two tables")
            seen[net] = i
            tr = Trust(i, net)
            if "services" in t:
                sv = t["services"]
                if not isinstance(sv, list):
                    self.err(f"{where}.services", f"must be a list of service names, got {_short(sv)}",
                             'write e.g. ["data", "control"]')
                codes = set()
                for k, name in enumerate(sv):
                    if not isinstance(name, str) or name not in C.SERVICE_CODE:
                        self.err(f"{where}.services[{k}]", f"{_short(name)} is not a service class",
                                 "write data, control, voip or video")
                    codes.add(C.SERVICE_CODE[name])
                tr.services = tuple(sorted(codes))
            if "preferences" in t:
                pv = t["preferences"]
                if not isinstance(pv, list):
                    self.err(f"{where}.preferences", f"must be a list of preferences, got {_short(pv)}",
                             'write e.g. [0, 1, 3, "4-100"]')
                rngs = []
                for k, x in enumerate(pv):
                    key = f"{where}.preferences[{k}]"
                    if isinstance(x, int) and not isinstance(x, bool):
                        if not 0 <= x <= 65535:
                            self.err(key, f"{_short(x)} is out of range", "write a preference 0..65535")
                        rngs.append((x, x))
                        continue
                    m = re.fullmatch(r"\s*([0-9]{1,6})\s*-\s*([0-9]{1,6})\s*", x) if isinstance(x, str) else None
                    if not m:
                        self.err(key, f"{_short(x)} is not a preference or range",
                                 'write a number 0..65535 or a range such as "4-100"')
                    lo, hi = int(m.group(1)), int(m.group(2))
                    if hi > 65535:
                        self.err(key, f"{_short(x)} is out of range", "write a range within 0..65535")
                    if lo > hi:
                        self.err(key, f"{_short(x)} runs backwards", f'write "{hi}-{lo}"')
                    rngs.append((lo, hi))
                merged = []
                for lo, hi in sorted(rngs):
                    if merged and lo <= merged[-1][1] + 1:
                        merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
                    else:
                        merged.append((lo, hi))
                tr.preferences = tuple(merged)
            cfg.trust.append(tr)

    def forwards(self, raw, cfg):
        """[[forward]] tables: port forwards from the uplinks to a LAN host: through NAPT44
        (IPv4 to a translating uplink's address, engine/translate.py) or opened in the
        stateful edge (IPv6 after NPTv6, which keeps ports; IPv4 an uplink leaves as it is)."""
        tables = raw.get("forward", [])
        if not isinstance(tables, list):
            self.err("forward", "must be an array of tables", "write each as [[forward]]")
        if len(tables) > MAX_FORWARDS:
            self.err("forward", f"{len(tables)} tables is more than mmr takes", f"keep at most {MAX_FORWARDS}")
        names = [u.name for u in cfg.uplinks]
        for i, t in enumerate(tables):
            where = f"forward[{i}]"
            if not isinstance(t, dict):
                self.err(where, "must be a table", "write each as [[forward]]")
            self.unknown(t, FORWARD_KEYS, where)
            for k, example in (("proto", '"tcp"'), ("port", "8080"), ("to", '"fd00:1::10"')):
                if k not in t:
                    self.err(f"{where}.{k}", "is missing", f"add {k} = {example}")
            proto = t["proto"]
            if not isinstance(proto, str) or proto.lower() not in ("tcp", "udp"):
                self.err(f"{where}.proto", f"{_short(proto)} is not a protocol mmr forwards", 'write "tcp" or "udp"')
            lo, hi = self.port_range(f"{where}.port", t["port"])
            if lo < 1 or hi - lo >= 1024:
                self.err(f"{where}.port", f"{_short(t['port'])} is not a port 1..65535 or a range of at most 1024",
                         'write e.g. 8080 or "6881-6889"')
            if not isinstance(t["to"], str):
                self.err(f"{where}.to", f"{_short(t['to'])} is not an address", 'write e.g. "fd00:1::10"')
            try:
                to = ipaddress.ip_address(t["to"])
            except ValueError:
                self.err(f"{where}.to", f"{_short(t['to'])} is not an address", 'write e.g. "fd00:1::10"')
            if cfg.lan_prefixes and not any(to in p for p in cfg.lan_prefixes):
                self.err(f"{where}.to", f"{to} is outside the LAN prefixes",
                         "write the address of a LAN host, inside one of " + ", ".join(map(str, cfg.lan_prefixes)))
            to_port = t.get("to_port", lo)
            if isinstance(to_port, bool) or not isinstance(to_port, int) or not 1 <= to_port <= 65535 - (hi - lo):
                self.err(f"{where}.to_port", f"{_short(to_port)} is not a port 1..65535 for the whole range",
                         "write the LAN host's first port, e.g. 80")
            ups = t.get("uplinks", names)
            if not isinstance(ups, list) or not all(isinstance(x, str) for x in ups) or not ups:
                self.err(f"{where}.uplinks", "must be a list of uplink names", f"write e.g. [\"{names[0]}\"]")
            for x in ups:
                if x not in names:
                    self.err(f"{where}.uplinks", f"{_short(x)} is not an uplink", f"use one of {', '.join(names)}")
            idx = tuple(sorted({names.index(x) for x in ups}))
            if to_port != lo:
                # only NAPT44 rewrites ports: the edge (IPv6, an untranslated uplink's IPv4)
                # opens the LAN host's own ports and changes nothing in the packet
                if to.version == 6:
                    self.err(f"{where}.to_port", f"{to_port} differs from port {lo}, and an IPv6 forward keeps "
                             "its port (the stateful edge opens it, nothing rewrites it)",
                             f"write to_port = {lo} (or leave it out) and let the LAN host listen there")
                for u in idx:
                    up = cfg.uplinks[u]
                    if not napt44(up, to):
                        why = ('nat = "none"' if up.nat == "none" else
                               f'nat = "auto", which leaves the public address {to} untranslated')
                        self.err(f"{where}.to_port", f"{to_port} differs from port {lo}, and uplink {up.name} "
                                 f"has {why}: only NAPT44 rewrites a forward's port",
                                 f"write to_port = {lo} (or leave it out), or list only translating uplinks "
                                 "in uplinks, or write nat = \"masquerade\" on that uplink")
            f = Forward(i, 6 if proto.lower() == "tcp" else 17, (lo, hi), to, to_port, idx)
            for g in cfg.forwards:
                if (g.proto == f.proto and g.to.version == to.version and set(g.uplinks) & set(idx)
                        and g.ports[0] <= hi and lo <= g.ports[1]):
                    self.err(f"{where}.port", f"{lo}-{hi} clashes with forward[{g.index}]'s {g.ports[0]}-{g.ports[1]} "
                             f"({proto.lower()} on a shared uplink)", "give each forward its own ports")
                # a LAN host's port behind two external ports: its answers could not tell
                # which one they belong to
                if (g.proto == f.proto and g.to == to and set(g.uplinks) & set(idx)
                        and g.to_port <= to_port + hi - lo and to_port <= g.to_port + g.ports[1] - g.ports[0]):
                    self.err(f"{where}.to_port", f"{to}'s ports {to_port}-{to_port + hi - lo} overlap "
                             f"forward[{g.index}]'s {g.to_port}-{g.to_port + g.ports[1] - g.ports[0]} "
                             f"({proto.lower()} on a shared uplink)", "give each forward its own ports on the LAN host")
            cfg.forwards.append(f)
        # the translator holds a forward once per uplink it translates on (pyx/nat.pyx: 64)
        n = sum(1 for f in cfg.forwards for u in f.uplinks if napt44(cfg.uplinks[u], f.to))
        if n > 64:
            self.err("forward", f"IPv4 forwards through NAPT44 count {n} times (once per translating uplink), "
                     "more than mmr takes", "keep it at most 64, e.g. by listing fewer uplinks in uplinks")

    def port_range(self, key, v):
        if isinstance(v, int) and not isinstance(v, bool):
            if 0 <= v <= 65535:
                return (v, v)
        elif isinstance(v, str):
            m = re.fullmatch(r"\s*([0-9]{1,5})\s*-\s*([0-9]{1,5})\s*", v)
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if 0 <= lo <= hi <= 65535:
                    return (lo, hi)
        self.err(key, f"{_short(v)} is not a port or port range", 'write a port 0..65535 or a range "lo-hi"')


def load_config(path: str | None = None, default: str = "default.toml") -> Config:
    """Load and validate a policy file; None loads the built-in ``default`` (default.toml
    for the router, default-host.toml for host mode)."""
    if path is None:
        src = resources.files("engine").joinpath(default)
        return _Loader(f"<built-in {default}>").load(src.read_text())
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file", "give the path of a policy file, or omit --config "
                          "to use the built-in default") from None
    except IsADirectoryError:
        raise ConfigError(path, None, "is a directory", "give the path of a policy file") from None
    except PermissionError:
        raise ConfigError(path, None, "cannot be read (permission denied)",
                          "make it readable or run as its owner") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(path, None, "is not UTF-8 text", "save the policy file as UTF-8 TOML") from None
    return _Loader(path).load(text)
