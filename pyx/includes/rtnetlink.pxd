# <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/if_addr.h>,
# <linux/neighbour.h>, <linux/if.h>: what engine/netlink.py speaks with the kernel (links,
# addresses, neighbours, qdisc statistics, RA options for userspace) and reads of a device's
# state.
cdef extern from *:
    """
    #include <linux/netlink.h>
    #include <linux/rtnetlink.h>
    #include <linux/if_link.h>
    #include <linux/if_addr.h>
    #include <linux/neighbour.h>
    #include <linux/pkt_sched.h>
    #include <linux/gen_stats.h>
    #include <linux/if.h>
    """
    # the fixed headers of the messages (engine/netlink.py uses their sizes)
    struct nlmsghdr:
        pass
    struct ifinfomsg:
        pass
    struct ifaddrmsg:
        pass
    struct ndmsg:
        pass
    struct tcmsg:
        pass
    struct rtmsg:
        pass
    struct nduseroptmsg:      # a router advertisement's option for userspace (RDNSS)
        pass
    const unsigned int TC_H_ROOT       # 0xFFFFFFFF: not an int enum
    enum:
        NETLINK_ROUTE
        NLM_F_REQUEST
        NLM_F_ACK
        NLM_F_DUMP
        NLM_F_MULTI
        NLMSG_NOOP
        NLMSG_ERROR
        NLMSG_DONE
        NLMSG_HDRLEN
        RTMGRP_LINK
        RTMGRP_NEIGH
        RTMGRP_IPV4_IFADDR
        RTMGRP_IPV6_IFADDR
        RTMGRP_IPV4_ROUTE
        RTMGRP_IPV6_ROUTE
        RTNLGRP_ND_USEROPT
        RTM_NEWNDUSEROPT
        NDUSEROPT_SRCADDR
        RTM_NEWROUTE
        RTM_DELROUTE
        RTM_GETROUTE
        RTA_DST
        RTA_OIF
        RTA_TABLE
        RTA_MULTIPATH
        RTA_GATEWAY
        RTA_PRIORITY
        RTN_UNICAST
        RT_TABLE_MAIN
        RTM_NEWLINK
        RTM_DELLINK
        RTM_GETLINK
        RTM_NEWADDR
        RTM_DELADDR
        RTM_GETADDR
        RTM_NEWNEIGH
        RTM_DELNEIGH
        RTM_GETNEIGH
        RTM_NEWQDISC
        RTM_GETQDISC
        IFLA_ADDRESS
        IFLA_IFNAME
        IFLA_MTU
        IFA_ADDRESS
        IFA_LOCAL
        IFA_BROADCAST
        IFA_FLAGS
        IFA_F_TENTATIVE
        IFA_F_DADFAILED
        NDA_DST
        NDA_LLADDR
        NUD_INCOMPLETE
        NUD_REACHABLE
        NUD_STALE
        NUD_DELAY
        NUD_PROBE
        NUD_FAILED
        NUD_NOARP
        NUD_PERMANENT
        TCA_STATS
        TCA_STATS2
        TCA_STATS_QUEUE
        IFF_UP
        IFF_LOWER_UP
