# cython: language_level=3
"""parse: Ethernet frames -> one ROW_DTYPE row per frame (engine.constants).

Takes   a batch: one C-contiguous uint8 buffer, int64 offsets and uint32 lengths (the ring
        memory of AF_PACKET, a pcap batch, ...), the traffic control option type.
Emits   rows[0:n], every byte written; counters[reason] += 1 per frame when given.
Drops   nothing itself: a bad frame gets a named reason code (engine.constants.REASONS) and
        the caller decides (forward/kernel/drop by the reason's action).

Fields are filled as parsing proceeds; when a frame ends in an error reason the row keeps
what was parsed before the error and every field not reached stays 0.  The walk:

  Ethernet II, up to two 802.1Q/802.1ad tags (vlan = outermost VID)   else truncated_l2
  ethertype IPv6 / IPv4                                                else not_ip
  IPv6: version 6, 40 bytes, 40 + payload length within the frame      else bad_ip_header /
        (payload length 0 = jumbogram: bounded by the frame)               truncated_l3
        the walk is bounded by the IP packet, not the frame (Ethernet padding is ignored)
  IPv6 extension headers: hop-by-hop (only directly after the IPv6 header, else
        hbh_not_first), routing, destination options, AH ((len+2)*4 bytes), fragment (all
        fragments keyed without ports; proto = the fragment header's next header; the walk
        stops there).  A header past the packet -> truncated_ext; more than
        MAX_EXT_HEADERS -> too_many_ext.
  options (hop-by-hop and destination options): an option past its header -> opt_overrun;
        more than 7 consecutive padding bytes -> pad_excess; more than 8 non-padding options
        -> too_many_opts (RFC 8504 section 5.3).  The traffic control option (type ==
        option_type) counts in the hop-by-hop header only: data length must be 3 (else
        bad_opt_len): service u8, preference u16 big-endian.  If it occurs twice the first
        wins.
  unknown options (RFC 8200 4.2), hop-by-hop header only.  mmr recognises Pad1, PadN, the
        traffic control option, Router Alert (0x05, RFC 2711) and Jumbo Payload (0xC2, RFC
        2675); the last two are passed on as they are (mmr runs no router-alert protocol:
        MLD is link-local multicast, left to the kernel; a jumbogram is bounded by the frame
        like any payload length 0).  Every other type is unrecognised and its two high-order
        bits say what to do: 00 skip; 01 discard -> opt_unknown_discard; 10 discard and send
        an ICMPv6 parameter problem (code 2) even to a multicast destination ->
        opt_unknown_icmp; 11 opt_unknown_icmp to a unicast destination, opt_unknown_discard
        to a multicast one.  The first option that is not skipped decides; the row's opt_off
        gets the offset of its type byte from the start of the IPv6 header (the parameter
        problem's pointer).  The walk goes on to the end (the rest of that header, the chain,
        the upper layer): the row is filled as for a good frame (the forwarder must see an
        ICMPv6 error to send no error about it, RFC 4443 2.4(e)), and the unknown-option
        reason is given only when the frame is otherwise ok or unknown_nh; any malformation
        found later wins.  ``honour=False`` (host mode: the VI's own packets out, and the
        kernel behind the VI is the destination of those in and acts on them itself) skips
        unknown options whatever their bits, as before RFC 8200 handling.
  destination options are for the destination (RFC 8200 4.1, 4.6); mmr forwards transit
        traffic and is never the destination of what it forwards (a packet to the machine's
        own addresses is left to its kernel; in host mode the kernel behind the VI is the
        destination): their headers are walked for their length and the RFC 8504 limits
        above only, their unknown options are not acted on.
  IPv4: version 4, IHL >= 5, total length >= header, within the frame, the header checksum
        right (RFC 1812 5.2.2; else bad_ip_header); fragments (MF or an offset) are keyed
        without ports.  Addresses are IPv4-mapped (::ffff:a.b.c.d).
  upper layer: TCP (20 bytes), UDP/UDP-Lite (8), SCTP/DCCP (12) give ports, else
        truncated_l4; ICMPv6/ICMP need 4 bytes, their echo request/reply 8 and give the
        identifier as source port.  Known port-less protocols are ok with ports 0; any
        other next header is unknown_nh (forwarded, keyed without ports).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int64_t, uint64_t
from libc.string cimport memset, memcpy

cimport rows
from rows cimport mmr_row
from if_ether cimport ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD
from icmp6 cimport ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY, ICMP_ECHO, ICMP_ECHOREPLY
from netinet_in cimport (IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_DCCP,
                         IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_GRE, IPPROTO_ESP, IPPROTO_AH,
                         IPPROTO_ICMPV6, IPPROTO_NONE, IPPROTO_DSTOPTS, IPPROTO_SCTP,
                         IPPROTO_UDPLITE, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_PIM, IPPROTO_MH)

import numpy as np
from engine.constants import ROW_DTYPE, N_REASONS

DEF MAX_PAD = 7
DEF MAX_OPTS = 8
DEF MAX_EXT = 16

cdef inline uint16_t be16(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline bint header_sum_ok(const uint8_t* h, uint32_t ihl) noexcept nogil:
    """The IPv4 header's one's complement sum (its checksum included) is 0xFFFF."""
    cdef uint32_t s = 0, i
    for i in range(0, ihl, 2):
        s += (<uint32_t>h[i] << 8) | h[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


cdef inline bint has_ports(uint8_t proto, uint32_t* need) noexcept nogil:
    if proto == IPPROTO_TCP:
        need[0] = 20
        return True
    if proto == IPPROTO_UDP or proto == IPPROTO_UDPLITE:
        need[0] = 8
        return True
    if proto == IPPROTO_SCTP or proto == IPPROTO_DCCP:
        need[0] = 12
        return True
    return False


DEF PROTO_OSPF = 89      # IANA protocol numbers <netinet/in.h> does not name
DEF PROTO_VRRP = 112
DEF PROTO_L2TP = 115


cdef inline bint portless_known(uint8_t proto) noexcept nogil:
    return (proto == IPPROTO_ESP or proto == IPPROTO_GRE or proto == IPPROTO_IPIP
            or proto == IPPROTO_IPV6 or proto == IPPROTO_NONE or proto == PROTO_OSPF
            or proto == IPPROTO_PIM or proto == PROTO_VRRP or proto == PROTO_L2TP
            or proto == IPPROTO_MH or proto == IPPROTO_ICMP or proto == IPPROTO_ICMPV6)


cdef inline int upper_layer(const uint8_t* p, uint32_t off, uint32_t end, uint8_t proto,
                            bint v6, mmr_row* r) noexcept nogil:
    """Fill proto/ports from the upper-layer header at p[off:end]; return a reason."""
    cdef uint32_t need = 0
    cdef uint8_t t
    r.proto = proto
    if has_ports(proto, &need):
        if end < off or end - off < need:
            return rows.R_TRUNCATED_L4
        r.l4_off = <uint16_t>off
        r.sport = be16(p + off)
        r.dport = be16(p + off + 2)
        r.flags |= rows.F_L4
        return rows.R_OK
    if (proto == IPPROTO_ICMPV6 and v6) or (proto == IPPROTO_ICMP and not v6):
        if end < off or end - off < 4:
            return rows.R_TRUNCATED_L4
        t = p[off]
        r.l4_off = <uint16_t>off
        r.icmp_type = t
        r.flags |= rows.F_L4
        if (v6 and (t == ICMP6_ECHO_REQUEST or t == ICMP6_ECHO_REPLY)) or \
                (not v6 and (t == ICMP_ECHO or t == ICMP_ECHOREPLY)):
            if end - off < 8:
                return rows.R_TRUNCATED_L4
            r.sport = be16(p + off + 4)
            r.flags |= rows.F_ECHO
        return rows.R_OK
    if portless_known(proto):
        return rows.R_OK
    return rows.R_UNKNOWN_NH


DEF OPT_ROUTER_ALERT = 0x05     # RFC 2711 (engine.constants.OPT_ROUTER_ALERT)
DEF OPT_JUMBO = 0xC2            # RFC 2675 (engine.constants.OPT_JUMBO)


cdef inline int walk_options(const uint8_t* p, uint32_t start, uint32_t stop, bint hbh,
                             int option_type, bint honour, int* pending, mmr_row* r) noexcept nogil:
    """TLV options in p[start:stop] (one hop-by-hop or destination options header).  In a
    hop-by-hop header (honour set), the first unrecognised option whose action is not skip
    sets *pending (its reason) and r.opt_off; the walk goes on."""
    cdef uint32_t i = start
    cdef uint8_t act
    cdef uint32_t pad = 0
    cdef uint32_t nopts = 0
    cdef uint32_t olen
    cdef uint8_t t
    while i < stop:
        t = p[i]
        if t == 0:  # Pad1
            pad += 1
            if pad > MAX_PAD:
                return rows.R_PAD_EXCESS
            i += 1
            continue
        if stop - i < 2:
            return rows.R_OPT_OVERRUN
        olen = p[i + 1]
        if olen > stop - i - 2:
            return rows.R_OPT_OVERRUN
        if t == 1:  # PadN
            pad += 2 + olen
            if pad > MAX_PAD:
                return rows.R_PAD_EXCESS
        else:
            pad = 0
            nopts += 1
            if nopts > MAX_OPTS:
                return rows.R_TOO_MANY_OPTS
            if hbh and t == option_type:
                if olen != 3:
                    return rows.R_BAD_OPT_LEN
                if not r.has_opt:
                    r.has_opt = 1
                    r.service = p[i + 2]
                    r.preference = be16(p + i + 3)
            elif hbh and honour and pending[0] == 0 and t != OPT_ROUTER_ALERT and t != OPT_JUMBO:
                act = t >> 6
                if act == 1 or (act == 3 and r.dst[0] == 0xFF):
                    pending[0] = rows.R_OPT_UNKNOWN_DISCARD
                elif act != 0:
                    pending[0] = rows.R_OPT_UNKNOWN_ICMP
                if act != 0:
                    r.opt_off = <uint16_t>(i - r.l3_off)
        i += 2 + olen
    return rows.R_OK


cdef inline int settle(int rc, int pending) noexcept nogil:
    """An unknown option's discard is the reason of an otherwise good frame only."""
    if pending != 0 and (rc == rows.R_OK or rc == rows.R_UNKNOWN_NH):
        return pending
    return rc


cdef int parse_one(const uint8_t* p, uint32_t flen, int option_type, mmr_row* r) noexcept nogil:
    """Parse one frame into r (zeroed by the caller); return the reason code.  Unknown
    hop-by-hop options are acted on (a router)."""
    return parse_one_ex(p, flen, option_type, True, r)


cdef int parse_one_ex(const uint8_t* p, uint32_t flen, int option_type, bint honour,
                      mmr_row* r) noexcept nogil:
    """parse_one; ``honour`` False skips every unknown option (host mode)."""
    cdef uint32_t off = 14
    cdef uint16_t etype
    cdef int tags = 0
    cdef uint32_t end, plen, ihl, tot, hl
    cdef uint8_t nh
    cdef int nhdr, rc
    cdef int pending = 0
    cdef uint16_t fragoff
    r.length = flen
    if flen < 14:
        return rows.R_TRUNCATED_L2
    etype = be16(p + 12)
    while etype == ETH_P_8021Q or etype == ETH_P_8021AD:
        if tags == 2:
            break
        if flen < off + 4:
            return rows.R_TRUNCATED_L2
        if tags == 0:
            r.vlan = be16(p + off) & 0x0FFF
            r.flags |= rows.F_VLAN
        etype = be16(p + off + 2)
        off += 4
        tags += 1
    if etype == ETH_P_IPV6:
        r.family = 6
        r.l3_off = <uint16_t>off
        if flen - off < 40:
            return rows.R_TRUNCATED_L3
        if (p[off] >> 4) != 6:
            return rows.R_BAD_IP_HEADER
        plen = be16(p + off + 4)
        if plen == 0:
            end = flen
        else:
            if plen > flen - off - 40:
                return rows.R_TRUNCATED_L3
            end = off + 40 + plen
        r.tclass = ((p[off] & 0x0F) << 4) | (p[off + 1] >> 4)
        r.hlim = p[off + 7]
        memcpy(r.src, p + off + 8, 16)
        memcpy(r.dst, p + off + 24, 16)
        nh = p[off + 6]
        off += 40
        nhdr = 0
        while True:
            if nh == IPPROTO_HOPOPTS or nh == IPPROTO_ROUTING or nh == IPPROTO_DSTOPTS \
                    or nh == IPPROTO_AH or nh == IPPROTO_FRAGMENT:
                if nh == IPPROTO_HOPOPTS and nhdr != 0:
                    return rows.R_HBH_NOT_FIRST
                nhdr += 1
                if nhdr > MAX_EXT:
                    return rows.R_TOO_MANY_EXT
                if end - off < 2 or (nh == IPPROTO_FRAGMENT and end - off < 8):
                    return rows.R_TRUNCATED_EXT
                if nh == IPPROTO_FRAGMENT:
                    r.flags |= rows.F_FRAGMENT
                    r.proto = p[off]
                    return settle(rows.R_OK, pending)
                if nh == IPPROTO_AH:
                    hl = (<uint32_t>p[off + 1] + 2) * 4
                else:
                    hl = (<uint32_t>p[off + 1] + 1) * 8
                if hl > end - off:
                    return rows.R_TRUNCATED_EXT
                if nh == IPPROTO_HOPOPTS or nh == IPPROTO_DSTOPTS:
                    rc = walk_options(p, off + 2, off + hl, nh == IPPROTO_HOPOPTS, option_type,
                                      honour, &pending, r)
                    if rc != rows.R_OK:
                        return rc
                nh = p[off]
                off += hl
                continue
            return settle(upper_layer(p, off, end, nh, True, r), pending)
    if etype == ETH_P_IP:
        r.family = 4
        r.l3_off = <uint16_t>off
        if flen - off < 20:
            return rows.R_TRUNCATED_L3
        if (p[off] >> 4) != 4:
            return rows.R_BAD_IP_HEADER
        ihl = (p[off] & 0x0F) * 4
        tot = be16(p + off + 2)
        if ihl < 20 or tot < ihl:
            return rows.R_BAD_IP_HEADER
        if tot > flen - off:
            return rows.R_TRUNCATED_L3
        if not header_sum_ok(p + off, ihl):       # RFC 1812 5.2.2: a router checks it
            return rows.R_BAD_IP_HEADER
        end = off + tot
        r.tclass = p[off + 1]
        r.hlim = p[off + 8]
        r.src[10] = 0xFF
        r.src[11] = 0xFF
        r.dst[10] = 0xFF
        r.dst[11] = 0xFF
        memcpy(r.src + 12, p + off + 12, 4)
        memcpy(r.dst + 12, p + off + 16, 4)
        nh = p[off + 9]
        fragoff = be16(p + off + 6)
        if (fragoff & 0x3FFF) != 0:  # MF or a fragment offset
            r.flags |= rows.F_FRAGMENT
            r.proto = nh
            return rows.R_OK
        return upper_layer(p, off + ihl, end, nh, False, r)
    return rows.R_NOT_IP


def parse_batch(const uint8_t[::1] buf, const int64_t[::1] offsets, const uint32_t[::1] lengths,
                out, int option_type=0x3E, counters=None, bint honour=True):
    """Parse frames buf[offsets[i]:offsets[i]+lengths[i]] into out[0:n]; return n.
    ``honour``: act on unknown hop-by-hop options (RFC 8200 4.2; False in host mode)."""
    cdef Py_ssize_t n = offsets.shape[0]
    cdef Py_ssize_t i
    cdef Py_ssize_t blen = buf.shape[0]
    cdef int64_t o
    if lengths.shape[0] != n:
        raise ValueError(f"offsets ({n}) and lengths ({lengths.shape[0]}) differ in length")
    if not isinstance(out, np.ndarray) or out.dtype != ROW_DTYPE or not out.flags.c_contiguous:
        raise TypeError("out must be a C-contiguous numpy array of engine.constants.ROW_DTYPE")
    if out.shape[0] < n:
        raise ValueError(f"out has {out.shape[0]} rows, the batch has {n} frames")
    if not (0 <= option_type <= 255):
        raise ValueError("option_type must be 0..255")
    cdef uint64_t[::1] cnt
    cdef bint counting = counters is not None
    if counting:
        cnt = counters
        if cnt.shape[0] < N_REASONS:
            raise ValueError(f"counters must have {N_REASONS} entries")
    for i in range(n):
        o = offsets[i]
        if o < 0 or o > blen or <int64_t>lengths[i] > blen - o:     # (no overflow near 2**63)
            raise ValueError(f"frame {i} (offset {o}, length {lengths[i]}) runs past the buffer")
    if n == 0:
        return 0
    cdef uint8_t[::1] outb = out.view(np.uint8).reshape(-1)
    cdef mmr_row* rp = <mmr_row*>&outb[0]
    cdef const uint8_t* base = &buf[0] if blen > 0 else NULL
    cdef int rc
    cdef uint8_t dummy = 0
    with nogil:
        for i in range(n):
            memset(&rp[i], 0, sizeof(mmr_row))
            if lengths[i] == 0:
                rc = parse_one_ex(&dummy, 0, option_type, honour, &rp[i])
            else:
                rc = parse_one_ex(base + offsets[i], lengths[i], option_type, honour, &rp[i])
            rp[i].reason = <uint8_t>rc
            if counting:
                cnt[rc] += 1
    return n
