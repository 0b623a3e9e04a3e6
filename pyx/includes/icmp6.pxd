# <netinet/icmp6.h>: ICMPv6 types and the type filter of a raw socket (the probes).
cdef extern from "<netinet/icmp6.h>":
    enum:
        ICMP6_FILTER
        ICMP6_ECHO_REQUEST
        ICMP6_ECHO_REPLY
        ICMP6_DST_UNREACH
        ICMP6_PACKET_TOO_BIG
        ICMP6_TIME_EXCEEDED
        ICMP6_PARAM_PROB
        ICMP6_PARAMPROB_OPTION

# <netinet/ip_icmp.h>: the ICMP (IPv4) echo types.
cdef extern from "<netinet/ip_icmp.h>":
    enum:
        ICMP_ECHO
        ICMP_ECHOREPLY
        ICMP_TIME_EXCEEDED
        ICMP_DEST_UNREACH
        ICMP_FRAG_NEEDED
