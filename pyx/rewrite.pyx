# cython: language_level=3
"""rewrite: make parsed frames ready to leave on their port, in place.

Takes   frames in a writable buffer (the RX ring), their parsed rows, and per frame a source
        and destination MAC index (-1: leave the frame alone).
Emits   for each selected frame: Ethernet source/destination rewritten; an 802.1Q/802.1ad
        tagged frame loses its tags (the offset moves forward, the length shrinks: uplinks
        are untagged); hop limit / TTL decremented, the IPv4 header checksum updated
        incrementally (RFC 1624, eq. 3).
Drops   nothing: a frame whose hop limit or TTL is <= 1 is left untouched and gets
        verdict[i] = 1; the caller drops it and answers with ICMP time exceeded.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int16_t, int64_t
from libc.string cimport memcpy

from rows cimport mmr_row

import numpy as np
from engine.constants import ROW_DTYPE

VERDICT_OK = 0
VERDICT_HOP_LIMIT = 1


cdef inline uint16_t csum_update(uint16_t hc, uint16_t m, uint16_t m2) noexcept nogil:
    cdef uint32_t s = (<uint32_t>(~hc & 0xFFFF)) + (<uint32_t>(~m & 0xFFFF)) + m2
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>(~s & 0xFFFF)


def rewrite(uint8_t[::1] buf, int64_t[::1] offsets, uint32_t[::1] lengths, rows_arr,
            const int16_t[::1] src_idx, const uint8_t[:, ::1] src_macs,
            const int16_t[::1] dst_idx, const uint8_t[:, ::1] dst_macs,
            uint8_t[::1] verdict, Py_ssize_t n=-1):
    """Rewrite frames i < n with src_idx[i] >= 0; returns how many hit the hop limit."""
    if rows_arr.dtype != ROW_DTYPE or not rows_arr.flags.c_contiguous:
        raise TypeError("rows must be a C-contiguous array of ROW_DTYPE")
    if n < 0:
        n = offsets.shape[0]
    if n > rows_arr.shape[0] or n > lengths.shape[0] or n > src_idx.shape[0] \
            or n > dst_idx.shape[0] or n > verdict.shape[0] or n > offsets.shape[0]:
        raise ValueError("every array must cover n frames")
    if src_macs.shape[1] != 6 or dst_macs.shape[1] != 6:
        raise ValueError("MAC tables must be uint8[k, 6]")
    cdef Py_ssize_t i
    cdef int64_t off
    cdef uint32_t l3, shift
    cdef uint8_t* p
    cdef uint16_t old, new, hc
    cdef int hop = 0
    cdef Py_ssize_t blen = buf.shape[0]
    for i in range(n):
        if src_idx[i] >= 0 and (src_idx[i] >= src_macs.shape[0] or dst_idx[i] < 0
                                or dst_idx[i] >= dst_macs.shape[0]):
            raise ValueError(f"frame {i}: MAC index out of range")
        if src_idx[i] >= 0 and (offsets[i] < 0 or offsets[i] + lengths[i] > blen):
            raise ValueError(f"frame {i} runs past the buffer")
    if n == 0:
        return 0
    cdef uint8_t[::1] rb = rows_arr.view(np.uint8).reshape(-1)
    cdef mmr_row* rp = <mmr_row*>&rb[0]
    cdef mmr_row* r
    with nogil:
        for i in range(n):
            verdict[i] = 0
            if src_idx[i] < 0:
                continue
            r = &rp[i]
            if r.family == 0 or r.l3_off < 14 or r.l3_off + (40 if r.family == 6 else 20) > lengths[i]:
                continue          # not a parsed IP frame: nothing to do (caller filtered it)
            off = offsets[i]
            p = &buf[0] + off
            l3 = r.l3_off
            if r.family == 6:
                if p[l3 + 7] <= 1:
                    verdict[i] = 1
                    hop += 1
                    continue
                p[l3 + 7] -= 1
            else:
                if p[l3 + 8] <= 1:
                    verdict[i] = 1
                    hop += 1
                    continue
                old = (<uint16_t>p[l3 + 8] << 8) | p[l3 + 9]
                p[l3 + 8] -= 1
                new = (<uint16_t>p[l3 + 8] << 8) | p[l3 + 9]
                hc = (<uint16_t>p[l3 + 10] << 8) | p[l3 + 11]
                hc = csum_update(hc, old, new)
                p[l3 + 10] = hc >> 8
                p[l3 + 11] = hc & 0xFF
            if l3 != 14:          # strip VLAN tags: the Ethernet header moves up to the IP header
                shift = l3 - 14
                offsets[i] = off + shift
                lengths[i] -= shift
                p = p + shift
                if r.family == 6:
                    p[12] = 0x86
                    p[13] = 0xDD
                else:
                    p[12] = 0x08
                    p[13] = 0x00
            memcpy(p, &dst_macs[dst_idx[i], 0], 6)
            memcpy(p + 6, &src_macs[src_idx[i], 0], 6)
    return hop
