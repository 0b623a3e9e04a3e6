# The parsed row, one per frame: the C view of engine.constants.ROW_DTYPE (64 bytes, packed).
# tests/test_contract.py checks every field offset against the numpy dtype.
from libc.stdint cimport uint8_t, uint16_t, uint32_t

cdef extern from *:
    """
    #pragma pack(push, 1)
    typedef struct mmr_row {
        uint8_t  src[16];
        uint8_t  dst[16];
        uint16_t sport;
        uint16_t dport;
        uint8_t  proto;
        uint8_t  family;
        uint8_t  tclass;
        uint8_t  has_opt;
        uint8_t  service;
        uint8_t  reason;
        uint16_t preference;
        uint16_t l3_off;
        uint16_t l4_off;
        uint32_t length;
        uint16_t vlan;
        uint8_t  hlim;
        uint8_t  flags;
        uint8_t  icmp_type;
        uint16_t opt_off;
        uint8_t  _pad[5];
    } mmr_row;
    #pragma pack(pop)
    """
    ctypedef struct mmr_row:
        uint8_t src[16]
        uint8_t dst[16]
        uint16_t sport
        uint16_t dport
        uint8_t proto
        uint8_t family
        uint8_t tclass
        uint8_t has_opt
        uint8_t service
        uint8_t reason
        uint16_t preference
        uint16_t l3_off
        uint16_t l4_off
        uint32_t length
        uint16_t vlan
        uint8_t hlim
        uint8_t flags
        uint8_t icmp_type
        uint16_t opt_off
        uint8_t _pad[5]

# reason codes (engine.constants.REASONS; checked by tests/test_contract.py)
cdef enum:
    R_OK = 0
    R_TRUNCATED_L2 = 1
    R_NOT_IP = 2
    R_TRUNCATED_L3 = 3
    R_BAD_IP_HEADER = 4
    R_TRUNCATED_EXT = 5
    R_OPT_OVERRUN = 6
    R_BAD_OPT_LEN = 7
    R_HBH_NOT_FIRST = 8
    R_PAD_EXCESS = 9
    R_TOO_MANY_OPTS = 10
    R_UNKNOWN_NH = 11
    R_TRUNCATED_L4 = 12
    R_TOO_MANY_EXT = 13
    R_NO_UPLINK = 14
    R_HOP_LIMIT = 15
    R_OVERSIZE = 16
    R_NO_NEIGHBOUR = 17
    R_BAD_OFFLOAD = 18
    R_OPT_UNKNOWN_DISCARD = 19
    R_OPT_UNKNOWN_ICMP = 20
    R_NAT_UNSOLICITED = 21
    R_NAT_EXHAUSTED = 22
    R_NAT_UNTRANSLATABLE = 23
    R_NAT_NO_ADDRESS = 24
    R_EDGE_UNSOLICITED = 25
    R_EDGE_FULL = 26
    N_REASONS = 27

# row flags
cdef enum:
    F_FRAGMENT = 0x01
    F_VLAN = 0x02
    F_ECHO = 0x04
    F_L4 = 0x08
