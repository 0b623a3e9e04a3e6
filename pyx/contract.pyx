# cython: language_level=3
"""Exports the C layout of pyx/rows.pxd so tests can compare it with engine.constants."""
from rows cimport mmr_row
cimport rows

def row_layout():
    """Return {field: (offset, size)} of the C struct mmr_row and its total size."""
    cdef mmr_row r
    cdef size_t base = <size_t>&r
    return {
        "src": (<size_t>&r.src - base, sizeof(r.src)),
        "dst": (<size_t>&r.dst - base, sizeof(r.dst)),
        "sport": (<size_t>&r.sport - base, sizeof(r.sport)),
        "dport": (<size_t>&r.dport - base, sizeof(r.dport)),
        "proto": (<size_t>&r.proto - base, sizeof(r.proto)),
        "family": (<size_t>&r.family - base, sizeof(r.family)),
        "tclass": (<size_t>&r.tclass - base, sizeof(r.tclass)),
        "has_opt": (<size_t>&r.has_opt - base, sizeof(r.has_opt)),
        "service": (<size_t>&r.service - base, sizeof(r.service)),
        "reason": (<size_t>&r.reason - base, sizeof(r.reason)),
        "preference": (<size_t>&r.preference - base, sizeof(r.preference)),
        "l3_off": (<size_t>&r.l3_off - base, sizeof(r.l3_off)),
        "l4_off": (<size_t>&r.l4_off - base, sizeof(r.l4_off)),
        "length": (<size_t>&r.length - base, sizeof(r.length)),
        "vlan": (<size_t>&r.vlan - base, sizeof(r.vlan)),
        "hlim": (<size_t>&r.hlim - base, sizeof(r.hlim)),
        "flags": (<size_t>&r.flags - base, sizeof(r.flags)),
        "icmp_type": (<size_t>&r.icmp_type - base, sizeof(r.icmp_type)),
        "opt_off": (<size_t>&r.opt_off - base, sizeof(r.opt_off)),
    }, sizeof(mmr_row)

def reason_codes():
    """The reason enum as the compiled code sees it."""
    return {
        "ok": rows.R_OK, "truncated_l2": rows.R_TRUNCATED_L2, "not_ip": rows.R_NOT_IP,
        "truncated_l3": rows.R_TRUNCATED_L3, "bad_ip_header": rows.R_BAD_IP_HEADER,
        "truncated_ext": rows.R_TRUNCATED_EXT, "opt_overrun": rows.R_OPT_OVERRUN,
        "bad_opt_len": rows.R_BAD_OPT_LEN, "hbh_not_first": rows.R_HBH_NOT_FIRST,
        "pad_excess": rows.R_PAD_EXCESS, "too_many_opts": rows.R_TOO_MANY_OPTS,
        "unknown_nh": rows.R_UNKNOWN_NH, "truncated_l4": rows.R_TRUNCATED_L4,
        "too_many_ext": rows.R_TOO_MANY_EXT, "no_uplink": rows.R_NO_UPLINK,
        "hop_limit": rows.R_HOP_LIMIT, "oversize": rows.R_OVERSIZE,
        "no_neighbour": rows.R_NO_NEIGHBOUR, "bad_offload": rows.R_BAD_OFFLOAD,
        "opt_unknown_discard": rows.R_OPT_UNKNOWN_DISCARD, "opt_unknown_icmp": rows.R_OPT_UNKNOWN_ICMP,
        "nat_unsolicited": rows.R_NAT_UNSOLICITED, "nat_exhausted": rows.R_NAT_EXHAUSTED,
        "nat_untranslatable": rows.R_NAT_UNTRANSLATABLE, "nat_no_address": rows.R_NAT_NO_ADDRESS,
        "edge_unsolicited": rows.R_EDGE_UNSOLICITED, "edge_full": rows.R_EDGE_FULL,
    }, rows.N_REASONS


from virtio_net cimport virtio_net_hdr
cimport engine._forward as F


def event_codes():
    """The counter-table events as pyx/engine/_forward.pxd numbers them."""
    return {
        "rx_inside": F.CNT_RX_INSIDE, "rx_uplink": F.CNT_RX_UPLINK, "tx_uplink": F.CNT_TX_UPLINK,
        "tx_inside": F.CNT_TX_INSIDE, "kernel": F.CNT_KERNEL, "handover": F.CNT_HANDOVER,
        "csum_finished": F.CNT_CSUM_FINISHED, "super_frames": F.CNT_SUPER_FRAMES,
        "icmp_sent": F.CNT_ICMP_SENT, "icmp_limited": F.CNT_ICMP_LIMITED,
        "neighbour_asked": F.CNT_NEIGHBOUR_ASKED, "tx_errors": F.CNT_TX_ERRORS,
        "truncated": F.CNT_TRUNCATED, "ring_drops": F.CNT_RING_DROPS,
        "internal_errors": F.CNT_INTERNAL_ERRORS,
        "untrusted_option": F.CNT_UNTRUSTED_OPTION, "reserved_preference": F.CNT_RESERVED_PREFERENCE,
        "lan_gone": F.CNT_LAN_GONE,
    }, F.CNT_SIZE


def struct_sizes():
    """sizeof of the C structs that numpy dtypes mirror."""
    cdef F.punt_rec p
    cdef size_t base = <size_t>&p
    return {"virtio_net_hdr": sizeof(virtio_net_hdr), "punt_rec": sizeof(F.punt_rec),
            "punt_rec.data": <size_t>&p.data - base, "punt_rec.addr": <size_t>&p.addr - base,
            "punt_rec.mtu": <size_t>&p.mtu - base}
