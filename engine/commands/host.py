"""mmr host: the virtual interface bridge of draft-hong-mif."""
from __future__ import annotations

from engine.commands import register_engine

DESCRIPTION = """\
Run host mode (draft-hong-mif): create a TUN device, the virtual interface (VI, default vi0),
give it the host's stable addresses and routes from [host], and bridge it to the physical
interfaces listed as uplinks.  Packets the stack writes to the VI are parsed, classified
(traffic control option, DSCP and rules), looked up in the flowbase and given an interface by
the metric policies, framed for that interface's gateway and sent with AF_PACKET; packets for
the VI's addresses arriving on any physical interface are written back into the VI.
Applications bind to the VI and never see which interface carries them.

The connection manager ([monitor]) watches the interfaces (netlink events, probes) and moves
the flows of a failed interface to a live one; they keep the VI's address, so open TCP
connections continue.  Rules may pin a destination, port or service to one interface
(uplink = "NAME": only via that interface).

IPv4 is translated per interface (each [[uplink]]'s nat, "auto" by default, which in host
mode translates every IPv4 packet from the VI): it leaves with the interface's own address
and a mapping port, so the networks need not route the VI's IPv4 address; replies to the
mapping come back to the VI, anything else to the interface's address stays the host's own.
nat = "none" sends the VI's address as it is (the network routes it).  IPv6 is translated
where an interface says nat6 = "masquerade" (NAPT66, to its own address); else the VI's
IPv6 address must be routed to the host.

'mmr status', 'mmr flows' and 'mmr reload' (or SIGHUP) work as with 'mmr run'; a reload may
add interfaces (into free [engine] uplink_slots; each comes up as at start: translated,
probed, guarded) and remove them (their flows move to the others, the device is the
kernel's again).  vi0 keeps the MTU it was given at start (the smallest interface's, or
[host] mtu): an added interface needs an MTU at least that, else the reload is refused.

On stop (SIGINT/SIGTERM) the TUN device goes, with its addresses and routes, and the
nftables table 'inet mmrhost' (which keeps the kernel from also taking VI-addressed packets
off the physical interfaces) is removed: the host is as it was.  The table belongs to an
'nft -i' child that exits with mmr, so a killed mmr leaves no table behind either."""

EPILOG = """\
needs: root, or a user with CAP_NET_RAW and CAP_NET_ADMIN as ambient capabilities and
access to /dev/net/tun (mode 0666 on Debian); iproute2, nftables; the networks behind the
interfaces must route the VI's IPv6 addresses back to this host (IPv4 is translated; the
built-in policy matches 'mmr testbed up --topology host', and 'mmr testbed up --topology
hostnat' builds networks that route nothing to the VI).  A missing TUN device, interface or
gateway, an address clash, or nat6 = "npt" on a host's uplink ends in one sentence, exit 2.

service: contrib/systemd/mmr-host.service ('mmr host --config /etc/mmr/mmr.toml', notify,
watchdog, a dynamic user with the two capabilities).  Logging as for 'mmr run'.

examples:
  mmr testbed up --topology host --prefix h- && ip netns exec h-host mmr host
  mmr host --config /etc/mmr/mmr.toml --log-level warning"""


def register(sub) -> None:
    register_engine(sub, "host", "host mode: the virtual interface bridge (TUN)", DESCRIPTION, EPILOG, "packets", "host")
