# <netinet/in.h>: IP protocol numbers (IPv6 extension headers included) and the IPv6
# socket options of RFC 3542 that the tagging and the test peers use.
cdef extern from "<netinet/in.h>":
    enum:
        IPPROTO_HOPOPTS
        IPPROTO_ICMP
        IPPROTO_TCP
        IPPROTO_UDP
        IPPROTO_DCCP
        IPPROTO_ROUTING
        IPPROTO_FRAGMENT
        IPPROTO_GRE
        IPPROTO_ESP
        IPPROTO_AH
        IPPROTO_ICMPV6
        IPPROTO_NONE
        IPPROTO_DSTOPTS
        IPPROTO_SCTP
        IPPROTO_UDPLITE
        IPPROTO_IPIP
        IPPROTO_IPV6
        IPPROTO_PIM
        IPPROTO_MH
        IPV6_RECVPKTINFO
        IPV6_PKTINFO
        IPV6_RECVHOPLIMIT
        IPV6_HOPLIMIT
        IPV6_HOPOPTS
