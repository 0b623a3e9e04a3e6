"""mmr run: the live router on the LAN device and every uplink of the policy file."""
from __future__ import annotations

from engine.commands import register_engine

DESCRIPTION = """\
Run the multihomed router: receive on the LAN device and on every uplink device of the policy
file (AF_PACKET TPACKET_V2 rings: every frame is handed over as it arrives) and forward, per
flow, over the uplink the metric function chooses.

LAN -> uplink: parse, flowbase lookup, selection for new flows, Ethernet rewrite (uplink MAC
-> gateway MAC), hop limit / TTL - 1 (ICMP time exceeded when it runs out), batched send on
the chosen uplink.  Uplink -> LAN: packets for the LAN prefixes go to the host's MAC from
the neighbour table.  Packets for the router itself (any of its addresses), broadcast,
multicast and link-local traffic (neighbour discovery, DHCP) stay with its kernel.

The kernel's default offloads are fine: a checksum a sender left unfinished is finished,
and super-frames (GRO, a local TSO sender) are passed on whole for the kernel to segment
on the way out.  Packets larger than the egress MTU get ICMPv6 packet too big (IPv4 with DF:
fragmentation needed; mmr does not fragment).  ICMP errors: at most 1000 a second.

While mmr runs, an nftables table 'inet mmr' keeps the router's kernel from forwarding or
answering what mmr forwards (at prerouting, before any route lookup), whatever routes it
has.  The handover is timed on one clock: the kernel forwards until a whole second, mmr
from then on, and the reverse when mmr stops, so no packet is lost or sent twice.  The table
belongs to an 'nft -i' child that exits with mmr, so even after a kill the kernel forwards
again at once.

After traffic mmr keeps polling its rings for engine.busy_poll_ms (default 1000 ms; one core
busy while traffic flows) so a frame is forwarded without a wake-up; 0 sleeps at once (no
CPU, a wake-up per frame at low rates: about +0.1 ms per round trip).

The connection manager ([monitor] in the policy file) follows every uplink: link and address
events from netlink, ICMPv6/ICMP probes out of each uplink (RTT, loss, jitter; down after
down_after losses, up after up_after answers and a hold-down).  When an uplink becomes
unusable, only its flows move, in one step, to the best usable uplink.  An uplink device
that does not exist at start is waited for (one line says so), and one deleted and made
again under its name (a modem re-enumerating, PPP redialling) is opened again on its new
index: both are taken into use once their link, address and next hop are up.  The LAN
device the same: missing at start it is waited for (one line says so), deleted it is let go
(uplinks, flows and translations stay; nothing is read from or sent to the LAN), and a
device of its name that appears is opened on its new index, its MAC, MTU, prefixes and
neighbours read afresh.  SIGHUP re-reads the policy file (an invalid one is rejected, the old
policy keeps running; uplinks may be added, up to [engine] uplink_slots, and removed: see
'mmr reload --help'); 'mmr status', 'mmr
flows' and 'mmr reload' talk to the control socket.  A one-line logfmt summary is logged
every --stats-interval seconds and at exit."""

EPILOG = """\
requirements: root, or any user holding CAP_NET_RAW and CAP_NET_ADMIN as ambient
capabilities (so that the nft child has them too); nftables; the devices of the policy file
(those missing at start are waited for);
gateways that answer neighbour discovery (or a static gateway_mac).  A missing privilege,
or a gateway that does not answer, ends with one sentence and exit status 2.

logging: lines on stderr, 'mmr: [warning: |error: ]text', at --log-level and above; under
systemd each line carries its syslog priority for the journal.  The summary line is logfmt:
counters, up_<uplink>=packets, flows, drops and every non-zero drop_<reason>.

service: contrib/systemd/mmr.service runs 'mmr run --config /etc/mmr/mmr.toml' as a
notify service (READY once forwarding, STATUS = the last summary, a watchdog fed by the
forwarding loop) under a dynamic user with the two capabilities; 'systemctl reload mmr'
sends SIGHUP.  After a crash nothing needs undoing; 'mmr cleanup' removes the plain table a
kernel without owner tables would leave.

signals: SIGINT/SIGTERM stop (handing the packets back to the kernel first: up to a second),
SIGHUP reloads the policy.

examples:
  mmr testbed up && ip netns exec mmr-mmr mmr run
  mmr run --config /etc/mmr/mmr.toml --log-level warning --stats-interval 300"""


def register(sub) -> None:
    register_engine(sub, "run", "run the live router (AF_PACKET datapath)", DESCRIPTION, EPILOG, "frames", "router")
