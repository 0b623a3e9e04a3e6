# cython: language_level=3
"""rewrite: make parsed frames ready to leave on their port, in place.

Takes   frames in a writable buffer (the RX ring), their parsed rows and virtio-net headers,
        and per frame a source and destination MAC index (-1: leave the frame alone).
Emits   for each selected frame: Ethernet source/destination rewritten; an 802.1Q/802.1ad
        tagged frame loses its tags (the offset moves forward, the length shrinks: uplinks
        are untagged); on a router's hop the hop limit / TTL is decremented and the IPv4
        header checksum updated incrementally (RFC 1624, eq. 3); an unfinished checksum
        (virtio-net NEEDS_CSUM: the sender left it to the device, as TX checksum offload
        does, e.g. a local or veth sender) is finished: the one's complement sum from
        csum_start to the end, which already holds the pseudo-header sum, folded and stored
        at csum_start + csum_offset.  A super-frame (GSO) keeps its request, shifted with the
        header: the kernel segments it on the way out and finishes each segment's checksum;
        written as one packet (into a TUN device) it is finished here too.
        With RW_STRIP (``[[uplink]] strip_option = true``: the edge of the option's domain)
        the traffic control option leaves the hop-by-hop header: a header with no other
        option goes whole (the next-header chain and the payload length follow), otherwise
        the other options are kept at their offsets modulo 8 (their alignment) with at most
        7 padding bytes in a row (RFC 8504 5.3) and the header shrinks by whole 8-byte units;
        the bytes before it (Ethernet, IPv6 header) move up, as for VLAN tags, so a
        checksum request's csum_start and a super-frame's hdr_len move back by as much.  No
        upper-layer checksum changes (the pseudo-header has no extension header in it).
Drops   nothing: a frame whose hop limit or TTL is <= 1 is left untouched and gets
        verdict 1 (the caller drops it and answers with ICMP time exceeded); a checksum
        request pointing outside the frame gets verdict 2 (the caller drops and counts it).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t, int64_t
from libc.string cimport memcpy, memmove, memset

from rows cimport mmr_row
from virtio_net cimport (virtio_net_hdr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_F_DATA_VALID,
                         VIRTIO_NET_HDR_GSO_NONE)
from if_ether cimport ETH_P_IP, ETH_P_IPV6

import numpy as np
from engine.constants import ROW_DTYPE, VNET_DTYPE

VERDICT_NAMES = {VERDICT_OK: "ok", VERDICT_HOP_LIMIT: "hop_limit", VERDICT_BAD_OFFLOAD: "bad_offload"}


cdef inline uint16_t csum_update(uint16_t hc, uint16_t m, uint16_t m2) noexcept nogil:
    cdef uint32_t s = (<uint32_t>(~hc & 0xFFFF)) + (<uint32_t>(~m & 0xFFFF)) + m2
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>(~s & 0xFFFF)


cdef uint16_t csum_fold(const uint8_t* p, size_t n, uint64_t seed) noexcept nogil:
    """The one's complement sum (RFC 1071) of p[0:n] as big-endian 16-bit words, plus seed,
    folded to 16 bits (not complemented).  Summed as 32-bit native words, then swapped."""
    cdef uint64_t s = 0
    cdef uint32_t w
    cdef uint16_t h
    cdef size_t i = 0
    while i + 4 <= n:
        memcpy(&w, p + i, 4)
        s += w
        i += 4
    if i + 2 <= n:
        memcpy(&h, p + i, 2)
        s += h
        i += 2
    if i < n:
        s += p[i]                    # the odd byte is the high half of a big-endian word;
                                     # as the low byte of a native (little-endian) word it
                                     # lands right after the swap below
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    h = <uint16_t>s
    h = <uint16_t>((h >> 8) | (h << 8))          # native little-endian sum -> network order
    s = <uint64_t>h + seed
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>s


cdef uint32_t ip_end(const uint8_t* frame, uint32_t length, const mmr_row* r) noexcept nogil:
    """Where the IP packet of a parsed frame ends (Ethernet padding after it is not summed)."""
    cdef uint32_t l3 = r.l3_off, plen
    if r.family == 4 and l3 + 4 <= length:
        plen = (<uint32_t>frame[l3 + 2] << 8) | frame[l3 + 3]
        return l3 + plen if l3 + plen <= length else length
    if r.family == 6 and l3 + 6 <= length:
        plen = (<uint32_t>frame[l3 + 4] << 8) | frame[l3 + 5]
        if plen == 0:
            return length                    # a jumbogram or a big super-frame: to the end
        return l3 + 40 + plen if l3 + 40 + plen <= length else length
    return length


cdef int finish_checksum(uint8_t* frame, uint32_t end, virtio_net_hdr* vh, bint gso_too) noexcept nogil:
    """Complete a NEEDS_CSUM request in place, summing from csum_start to ``end`` (the end of
    the IP packet); gso_too: a super-frame as well.  Returns a VERDICT_*; a finished frame's
    header says DATA_VALID."""
    cdef uint32_t start = vh.csum_start
    cdef uint32_t at
    cdef uint16_t c
    if not (vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM):
        return VERDICT_OK
    if vh.gso_type != VIRTIO_NET_HDR_GSO_NONE and not gso_too:
        return VERDICT_OK
    at = start + vh.csum_offset
    if start >= end or at + 2 > end:
        return VERDICT_BAD_OFFLOAD
    c = <uint16_t>(~csum_fold(frame + start, end - start, 0) & 0xFFFF)
    if c == 0:
        c = 0xFFFF                   # as the kernel's skb_checksum_help: 0 means "none" in UDP
    frame[at] = c >> 8
    frame[at + 1] = c & 0xFF
    vh.flags = VIRTIO_NET_HDR_F_DATA_VALID
    vh.gso_type = VIRTIO_NET_HDR_GSO_NONE
    vh.gso_size = 0
    vh.csum_start = 0
    vh.csum_offset = 0
    return VERDICT_OK


cdef inline void write_pad(uint8_t* q, uint32_t n) noexcept nogil:
    """n bytes of padding: Pad1 for one byte, else one PadN."""
    if n == 1:
        q[0] = 0
    elif n >= 2:
        q[0] = 1
        q[1] = <uint8_t>(n - 2)
        memset(q + 2, 0, n - 2)


cdef uint32_t strip_option(uint8_t* p, uint32_t length, const mmr_row* r, virtio_net_hdr* vh,
                           int opt_type) noexcept nogil:
    """Take the traffic control option (type opt_type) out of the hop-by-hop header of the
    IPv6 frame at p; returns the bytes removed from the header, which the frame's first
    bytes (Ethernet, IPv6 header) moved up over: the frame now starts that much later."""
    cdef uint32_t l3 = r.l3_off, q = l3 + 40, hl, i, end, w, sz, pad, removed, plen
    cdef int found = 0, others = 0
    cdef uint8_t t
    cdef uint8_t tmp[2048]
    if r.family != 6 or not r.has_opt or q + 8 > length or p[l3 + 6] != 0:
        return 0
    hl = (<uint32_t>p[q + 1] + 1) * 8
    end = q + hl
    if end > length:
        return 0
    i = q + 2
    while i < end:                      # the parser checked it; look again before writing
        t = p[i]
        if t == 0:
            i += 1
            continue
        if i + 2 > end or i + 2 + p[i + 1] > end:
            return 0
        if t == opt_type:
            found += 1
        elif t != 1:
            others += 1
        i += 2 + p[i + 1]
    if not found:
        return 0
    if others == 0:
        removed = hl                    # the whole header: the IPv6 header takes its next header
        p[l3 + 6] = p[q]
    else:
        tmp[0] = p[q]
        w = 2
        i = q + 2
        while i < end:
            t = p[i]
            if t == 0:
                i += 1
                continue
            sz = 2 + <uint32_t>p[i + 1]
            if t != 1 and t != opt_type:
                pad = (i - q - w) & 7    # keep the option's offset modulo 8 (its alignment)
                write_pad(tmp + w, pad)
                w += pad
                memcpy(tmp + w, p + i, sz)
                w += sz
            i += sz
        pad = (8 - (w & 7)) & 7
        write_pad(tmp + w, pad)
        w += pad
        tmp[1] = <uint8_t>(w / 8 - 1)
        removed = hl - w
        memcpy(p + q + removed, tmp, w)
    plen = (<uint32_t>p[l3 + 4] << 8) | p[l3 + 5]
    if plen:                            # 0: a jumbogram or a big super-frame, left at 0
        plen -= removed
        p[l3 + 4] = plen >> 8
        p[l3 + 5] = plen & 0xFF
    if removed:
        memmove(p + removed, p, q)
        if vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            vh.csum_start -= removed
        if vh.hdr_len > removed:
            vh.hdr_len -= removed
    return removed


cdef int rewrite_one(uint8_t* base, int64_t* off, uint32_t* length, const mmr_row* r,
                     virtio_net_hdr* vh, const uint8_t* smac, const uint8_t* dmac, int how) noexcept nogil:
    """One parsed IP frame at base + off[0] (RW_* in how); may move off and shrink length
    (VLAN tags removed).  Returns a VERDICT_*."""
    cdef uint8_t* p = base + off[0]
    cdef uint32_t l3 = r.l3_off, shift
    cdef uint16_t old, new, hc
    cdef int v
    if r.family == 0 or l3 < 14 or l3 + (40 if r.family == 6 else 20) > length[0]:
        return VERDICT_OK                # not a parsed IP frame: nothing to do (caller filtered it)
    if how & RW_HOP:
        if r.family == 6:
            if p[l3 + 7] <= 1:
                return VERDICT_HOP_LIMIT
        elif p[l3 + 8] <= 1:
            return VERDICT_HOP_LIMIT
    v = finish_checksum(p, ip_end(p, length[0], r), vh, (how & RW_CSUM_GSO) != 0)
    if v != VERDICT_OK:
        return v
    if how & RW_HOP:
        if r.family == 6:
            p[l3 + 7] -= 1
        else:
            old = (<uint16_t>p[l3 + 8] << 8) | p[l3 + 9]
            p[l3 + 8] -= 1
            new = (<uint16_t>p[l3 + 8] << 8) | p[l3 + 9]
            hc = (<uint16_t>p[l3 + 10] << 8) | p[l3 + 11]
            hc = csum_update(hc, old, new)
            p[l3 + 10] = hc >> 8
            p[l3 + 11] = hc & 0xFF
    if how & RW_STRIP:
        shift = strip_option(p, length[0], r, vh, (how >> 8) & 0xFF)
        off[0] += shift
        length[0] -= shift
        p = p + shift
    if l3 != 14:          # strip VLAN tags: the Ethernet header moves up to the IP header
        shift = l3 - 14
        off[0] += shift
        length[0] -= shift
        p = p + shift
        if vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            vh.csum_start -= shift
        if vh.hdr_len > shift:
            vh.hdr_len -= shift
        if r.family == 6:
            p[12] = ETH_P_IPV6 >> 8
            p[13] = ETH_P_IPV6 & 0xFF
        else:
            p[12] = ETH_P_IP >> 8
            p[13] = ETH_P_IP & 0xFF
    if how & RW_MACS:
        memcpy(p, dmac, 6)
        memcpy(p + 6, smac, 6)
    return VERDICT_OK


def _vnet_ptr(vnet, Py_ssize_t n):
    if vnet is None:
        vnet = np.zeros(max(n, 1), VNET_DTYPE)
    if vnet.dtype != VNET_DTYPE or not vnet.flags.c_contiguous or vnet.shape[0] < n:
        raise TypeError("vnet must be a C-contiguous VNET_DTYPE array covering n frames")
    return vnet


def rewrite(uint8_t[::1] buf, int64_t[::1] offsets, uint32_t[::1] lengths, rows_arr,
            const int16_t[::1] src_idx, const uint8_t[:, ::1] src_macs,
            const int16_t[::1] dst_idx, const uint8_t[:, ::1] dst_macs,
            uint8_t[::1] verdict, Py_ssize_t n=-1, vnet=None, bint hop=True, bint gso_too=False,
            int strip=0):
    """Rewrite frames i < n with src_idx[i] >= 0 (MACs, VLAN tags off, hop limit - 1 when
    ``hop``, unfinished checksums finished; ``strip``: an option type, that option removed);
    returns how many hit the hop limit."""
    if rows_arr.dtype != ROW_DTYPE or not rows_arr.flags.c_contiguous:
        raise TypeError("rows must be a C-contiguous array of ROW_DTYPE")
    if n < 0:
        n = offsets.shape[0]
    if n > rows_arr.shape[0] or n > lengths.shape[0] or n > src_idx.shape[0] \
            or n > dst_idx.shape[0] or n > verdict.shape[0] or n > offsets.shape[0]:
        raise ValueError("every array must cover n frames")
    if src_macs.shape[1] != 6 or dst_macs.shape[1] != 6:
        raise ValueError("MAC tables must be uint8[k, 6]")
    vnet = _vnet_ptr(vnet, n)
    cdef Py_ssize_t i
    cdef Py_ssize_t blen = buf.shape[0]
    for i in range(n):
        if src_idx[i] >= 0 and (src_idx[i] >= src_macs.shape[0] or dst_idx[i] < 0
                                or dst_idx[i] >= dst_macs.shape[0]):
            raise ValueError(f"frame {i}: MAC index out of range")
        if src_idx[i] >= 0 and (offsets[i] < 0 or offsets[i] > blen or lengths[i] > blen - offsets[i]):
            raise ValueError(f"frame {i} runs past the buffer")
    if n == 0:
        return 0
    cdef uint8_t[::1] rb = rows_arr.view(np.uint8).reshape(-1)
    cdef mmr_row* rp = <mmr_row*>&rb[0]
    cdef uint8_t[::1] vb = vnet.view(np.uint8)
    cdef virtio_net_hdr* vp = <virtio_net_hdr*>&vb[0]
    if not 0 <= strip <= 0xFF:
        raise ValueError("strip is an option type 0..255 (0: keep the option)")
    cdef int how = RW_MACS | (RW_HOP if hop else 0) | (RW_CSUM_GSO if gso_too else 0)
    if strip:
        how |= RW_STRIP | (strip << 8)
    cdef int hops = 0
    with nogil:
        for i in range(n):
            verdict[i] = VERDICT_OK
            if src_idx[i] < 0:
                continue
            verdict[i] = rewrite_one(&buf[0], &offsets[i], &lengths[i], &rp[i], &vp[i],
                                     &src_macs[src_idx[i], 0], &dst_macs[dst_idx[i], 0], how)
            if verdict[i] == VERDICT_HOP_LIMIT:
                hops += 1
    return hops


def finish_checksums(uint8_t[::1] buf, const int64_t[::1] offsets, const uint32_t[::1] lengths,
                     rows_arr, vnet, Py_ssize_t n=-1, bint gso_too=False):
    """Finish the unfinished checksums of parsed frames i < n in place; returns a verdict
    array."""
    if rows_arr.dtype != ROW_DTYPE or not rows_arr.flags.c_contiguous:
        raise TypeError("rows must be a C-contiguous array of ROW_DTYPE")
    if n < 0:
        n = offsets.shape[0]
    if n > offsets.shape[0] or n > lengths.shape[0] or n > rows_arr.shape[0]:
        raise ValueError("every array must cover n frames")
    vnet = _vnet_ptr(vnet, n)
    cdef Py_ssize_t i
    cdef Py_ssize_t blen = buf.shape[0]
    for i in range(n):
        if offsets[i] < 0 or offsets[i] > blen or lengths[i] > blen - offsets[i]:
            raise ValueError(f"frame {i} runs past the buffer")
    out = np.zeros(n, np.uint8)
    if n == 0:
        return out
    cdef uint8_t[::1] o = out
    cdef uint8_t[::1] vb = vnet.view(np.uint8)
    cdef virtio_net_hdr* vp = <virtio_net_hdr*>&vb[0]
    cdef uint8_t[::1] rb = rows_arr.view(np.uint8).reshape(-1)
    cdef mmr_row* rp = <mmr_row*>&rb[0]
    cdef uint8_t* f
    with nogil:
        for i in range(n):
            f = &buf[0] + offsets[i]
            o[i] = finish_checksum(f, ip_end(f, lengths[i], &rp[i]), &vp[i], gso_too)
    return out


def internet_checksum(const uint8_t[::1] data):
    """RFC 1071 checksum of data (complemented), for tests and the rare Python paths."""
    if data.shape[0] == 0:
        return 0xFFFF
    return (~csum_fold(&data[0], data.shape[0], 0)) & 0xFFFF
