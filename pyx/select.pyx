# cython: language_level=3
"""select: a new flow's (service, preference, source address) -> uplink.

Takes   per uplink the eight characteristics (configured, or live values later), the usable
        mask and the metric; the policies of the config (preference -> V_n, V_t); the
        uplinks' weights and [select] sticky_s.
Emits   one uplink index per new flow, or -1 when no uplink is usable (the pipeline drops
        with reason no_uplink).
Counts  selected per uplink, undefined_preference (fell back to 0), no_uplink, sticky
        (load-balanced flows that followed their source address).

Normalisation across the usable uplinks so that 1 is always best: benefit characteristics
x / max(x), cost characteristics 1 - x / max(x), 1 for all when max is 0.  For preference p
and service s, F(u) = sum_k norm[u, V_n[k]] * V_t[k](s); the highest F wins; scores within
1e-9 are a tie, broken by the lower metric, then config order.  Preference 0 has no terms:
every score is 0 and the lowest metric wins (the primary).  Scores depend only on
(preference, service), so ``update`` computes the winner of every (policy, service) pair
once and a new flow's uplink is a table read.

Preference 3 (load balancing) spreads new flows instead: a smooth weighted round-robin over
the usable uplinks with a weight > 0 (``weight``, default bandwidth_mbps; 1 each when none
of the uplinks without a weight has a bandwidth).  Over any N new flows an uplink of weight
w gets N * w / sum(w) of them, give or take one, in an interleaved order; ties go to the
higher F of preference 3 (the draft's lowest queueing delay), then the lower metric, then
config order.  With sticky_s > 0 a new load-balanced flow whose source address had one
within sticky_s seconds takes that flow's uplink (and does not turn the rotation): a
FlowTable keyed by the source alone, idle after sticky_s, least recently used evicted.
Flows already in the flowbase never come here: their packets cost nothing more.

Resolvers pinned to their uplink (``[[uplink]] dns``, RDNSS learned on it; RFC 6419 2.3.1:
a resolver is asked over the network that gave it): a new flow to one of them takes that
uplink whatever its preference, or -1 (dropped, no_uplink) while that uplink is unusable:
another ISP's customers are usually refused there, and the LAN's stub resolver turns to its
next server at once.  At most MAX_RESOLVERS addresses, scanned per new flow
(``resolver_c``, called by the pipeline before ``pick_c``).  Counts resolver_pinned and
resolver_down.
"""
from libc.stdint cimport uint8_t, uint16_t, int16_t, int64_t, uint64_t
from libc.string cimport memcpy, memset, memcmp

from rows cimport mmr_row
from engine._flowbase cimport FlowTable

import numpy as np
from engine import _flowbase
from engine import constants as C

DEF TIE = 1e-9
STICKY_SOURCES = 65536        # at most this many sources remembered (least recently used go)


def lb_weights(weight_cfg, chars, usable):
    """Effective load-balancing weight per uplink: the configured one, else bandwidth_mbps
    (1 each when none of the usable uplinks without a weight has a bandwidth); 0 when not
    usable."""
    bw = C.CHAR_INDEX["bandwidth"]
    n = len(weight_cfg)
    defaulted = [u for u in range(n) if usable[u] and weight_cfg[u] < 0]
    one = all(float(chars[u][bw]) <= 0.0 for u in defaulted)
    out = []
    for u in range(n):
        if not usable[u]:
            out.append(0.0)
        elif weight_cfg[u] >= 0:
            out.append(float(weight_cfg[u]))
        else:
            out.append(1.0 if one else max(float(chars[u][bw]), 0.0))
    return out


cdef class Selector:

    def __init__(self, cfg):
        from engine.config import characteristics_matrix

        self.n_uplinks = len(cfg.uplinks)
        self.names = [u.name for u in cfg.uplinks]
        numbers = sorted(cfg.policies)
        self.policy_numbers = numbers
        self.pref_slot = np.zeros(65536, np.uint16)
        self.pref_defined = np.zeros(65536, np.uint8)
        terms = []
        for slot, num in enumerate(numbers):
            pol = cfg.policies[num]
            self.pref_slot[num] = slot
            self.pref_defined[num] = 1
            t = []
            for cname, f in zip(pol.network, pol.flow):
                w = cfg.classes[f] if isinstance(f, str) else (float(f),) * 4
                t.append((C.CHAR_INDEX[cname], tuple(float(x) for x in w)))
            terms.append(t)
        self.terms = terms
        self.pins = [cfg.policies[num].pin for num in numbers]
        self.pref_slot[0] = numbers.index(0)
        self.lb_slot = numbers.index(C.PREF_LOAD_BALANCE)
        self.selected = np.zeros(max(self.n_uplinks, 1), np.uint64)
        n = max(self.n_uplinks, 1)
        self.weight_cfg = np.array([-1.0 if getattr(u, "weight", None) is None else float(u.weight)
                                    for u in cfg.uplinks] or [-1.0], np.float64)
        self.weight = np.zeros(n, np.float64)
        self.wrr = np.zeros(n, np.float64)
        self.lb_order = np.zeros(n, np.int16)
        self.n_lb = 0
        sel = getattr(cfg, "select", None) or {}
        self.sticky_s = float(sel.get("sticky_s", 0.0))
        self.sticky_on = self.sticky_s > 0
        if self.sticky_on:
            self.sticky = _flowbase.FlowTable(min(int(cfg.flow_capacity), STICKY_SOURCES), None, self.sticky_s)
        self.usable_c = np.zeros(n, np.uint8)
        self.set_resolvers(config_resolvers(cfg))
        self.update(characteristics_matrix(cfg),
                    np.array([u.usable for u in cfg.uplinks], np.uint8),
                    np.array([u.metric for u in cfg.uplinks], np.float64))

    def update(self, chars, usable, metric=None):
        """New characteristics / usable mask / metrics: recompute every winner and the
        load-balancing weights.  When the weights change (an uplink down or up, another
        bandwidth) the rotation starts again; an uplink that loses its share leaves the
        sticky table too (its sources choose again)."""
        chars = np.ascontiguousarray(chars, dtype=np.float64)
        usable = np.ascontiguousarray(usable, dtype=np.uint8)
        if chars.shape != (self.n_uplinks, C.N_CHARS) or usable.shape != (self.n_uplinks,):
            raise ValueError(f"expected chars[{self.n_uplinks}, {C.N_CHARS}] and usable[{self.n_uplinks}]")
        if metric is None:
            metric = self._metric if self._metric is not None else np.arange(self.n_uplinks, dtype=np.float64)
        metric = np.ascontiguousarray(metric, dtype=np.float64)
        self._chars, self._usable, self._metric = chars.copy(), usable.copy(), metric.copy()
        for u in range(self.n_uplinks):
            self.usable_c[u] = usable[u] != 0
        norm = normalize(chars, usable)
        self._norm = norm
        n_slots = len(self.terms)
        best = np.full((n_slots, C.N_SERVICES), -1, np.int16)
        order = [u for u in sorted(range(self.n_uplinks), key=lambda u: (metric[u], u)) if usable[u]]
        for slot, t in enumerate(self.terms):
            pin = self.pins[slot]
            for s in range(C.N_SERVICES):
                if pin is not None:          # a pinned uplink or nothing ("only via I2")
                    best[slot, s] = pin if usable[pin] else -1
                else:
                    best[slot, s] = pick(norm, t, s, order)
        # load balancing: weights, the rotation's tie order, the first pick of a rotation
        was = [self.weight[u] for u in range(self.n_uplinks)]
        w = lb_weights(np.asarray(self.weight_cfg)[:self.n_uplinks], chars, usable)
        restart = w != was                   # other shares: the rotation starts again
        for u in range(self.n_uplinks):
            self.weight[u] = w[u]
            if restart:
                self.wrr[u] = 0.0
            if w[u] <= 0 < was[u] and self.sticky_on:
                self.sticky.rebind(u, -1)
        lb = tie_order(norm, self.terms[self.lb_slot], [u for u in order if w[u] > 0])
        self.n_lb = len(lb)
        for k, u in enumerate(lb):
            self.lb_order[k] = u
        first = -1
        for u in lb:
            if first < 0 or w[u] > w[first]:
                first = u
        best[self.lb_slot, :] = first
        self.best = best

    cdef int16_t rotate_c(self) noexcept nogil:
        """Smooth weighted round-robin (as nginx's upstream): every uplink with a share adds
        its weight, the largest value wins and gives back the sum of the weights."""
        cdef int k, u, win = -1
        cdef double total = 0.0
        for k in range(self.n_lb):
            u = self.lb_order[k]
            self.wrr[u] += self.weight[u]
            total += self.weight[u]
            if win < 0 or self.wrr[u] > self.wrr[win]:
                win = u
        if win >= 0:
            self.wrr[win] -= total
        return <int16_t>win

    cdef int16_t balance_c(self, const uint8_t* src, double ts) noexcept nogil:
        """A new load-balanced flow: its source's live uplink, else the rotation's next."""
        cdef mmr_row key
        cdef int16_t o = -1, u
        cdef uint8_t z8 = 0
        cdef uint16_t z16 = 0
        if src == NULL or not self.sticky_on:
            return self.rotate_c()
        memset(&key, 0, sizeof(mmr_row))
        memcpy(key.src, src, 16)
        self.sticky.lookup_c(&key, &ts, &o, 1, NULL)      # refreshes a live source
        if o >= 0 and o < self.n_uplinks and self.weight[o] > 0:
            self.followed += 1
            return o
        u = self.rotate_c()
        if u >= 0 and o < 0:
            self.sticky.insert_c(&key, &ts, &o, &u, &z8, &z16, 1, NULL)
        return u

    cdef int16_t pick_c(self, const uint8_t* src, uint8_t service, uint16_t pref,
                        double ts) noexcept nogil:
        """One new flow (src: its 16-byte source address, or NULL): its uplink or -1."""
        cdef int s = service if service <= 3 else 0
        cdef int slot = self.pref_slot[pref]
        cdef int16_t u
        if not self.pref_defined[pref]:
            self.undefined += 1
        if slot == self.lb_slot:
            u = self.balance_c(src, ts)
        else:
            u = self.best[slot, s]
        if u < 0:
            self.no_uplink += 1
        else:
            self.selected[u] += 1
        return u

    cdef int16_t resolver_c(self, const uint8_t* dst) noexcept nogil:
        """A new flow to dst: its resolver's uplink, -1 while that one is unusable, -2 when
        dst is no pinned resolver."""
        cdef int k
        cdef int16_t u
        for k in range(self.n_res):
            if memcmp(&self.res_addr[k, 0], dst, 16) == 0:
                u = self.res_up[k]
                if self.usable_c[u]:
                    self.res_hits += 1
                    self.selected[u] += 1
                    return u
                self.res_down += 1
                self.no_uplink += 1
                return -1
        return -2

    def set_resolvers(self, pairs):
        """[(address, uplink index)]: 16-byte addresses (IPv4 mapped) or text; new flows to
        them take that uplink from now on (flows already made keep theirs)."""
        import ipaddress

        pairs = list(pairs)
        if len(pairs) > C.MAX_RESOLVERS:
            raise ValueError(f"at most {C.MAX_RESOLVERS} resolvers")
        addr = np.zeros((max(len(pairs), 1), 16), np.uint8)
        up = np.zeros(max(len(pairs), 1), np.int16)
        for k, (a, u) in enumerate(pairs):
            if isinstance(a, str):
                ip = ipaddress.ip_address(a)
                a = ip.packed if ip.version == 6 else bytes(10) + b"\xff\xff" + ip.packed
            if len(a) != 16 or not 0 <= u < self.n_uplinks:
                raise ValueError(f"resolver {k}: a 16-byte address and an uplink index below {self.n_uplinks}")
            addr[k] = np.frombuffer(a, np.uint8)
            up[k] = u
        self.n_res = 0                       # (a worker applies this between batches)
        self.res_addr, self.res_up = addr, up
        self.n_res = len(pairs)

    def resolvers(self):
        """[(16-byte address, uplink index)] pinned now."""
        return [(bytes(self.res_addr[k]), int(self.res_up[k])) for k in range(self.n_res)]

    def select(self, uint8_t[::1] service, uint16_t[::1] pref, int16_t[::1] out, Py_ssize_t n=-1,
               rows=None, ts=None):
        """out[i] = uplink for new flow i of (service[i], pref[i]), i < n, in order; -1 when
        none is usable.  With rows (ROW_DTYPE) and ts: their source addresses and times
        count for stickiness."""
        cdef Py_ssize_t i
        cdef const uint8_t* rb = NULL
        cdef const double[::1] tv
        cdef const uint8_t[::1] rv
        if n < 0:
            n = service.shape[0]
        if n > service.shape[0] or n > pref.shape[0] or n > out.shape[0]:
            raise ValueError("n is larger than the arrays")
        if rows is not None:
            if rows.dtype != C.ROW_DTYPE or not rows.flags.c_contiguous or rows.shape[0] < n:
                raise ValueError("rows must be a contiguous ROW_DTYPE array covering n")
            tv = np.ascontiguousarray(ts, dtype=np.float64)
            if tv.shape[0] < n:
                raise ValueError("ts must cover n")
            rv = rows.view(np.uint8).reshape(-1)
        if n == 0:
            return
        if rows is None:
            with nogil:
                self.select_c(&service[0], &pref[0], &out[0], n)
            return
        rb = &rv[0]
        with nogil:
            for i in range(n):
                out[i] = self.pick_c((<const mmr_row*>rb)[i].src, service[i], pref[i], tv[i])

    cdef void select_c(self, const uint8_t* service, const uint16_t* pref, int16_t* out,
                       Py_ssize_t n) noexcept nogil:
        """n new flows without source addresses (no stickiness), in order."""
        cdef Py_ssize_t i
        for i in range(n):
            out[i] = self.pick_c(NULL, service[i], pref[i], 0.0)

    def carry_over(self, Selector old):
        """A reloaded policy with the same uplinks: keep the rotation and the sticky sources
        of the selector it replaces.  Returns whether it did."""
        cdef int u
        if old is None or old.names != self.names:
            return False
        if self.weights().tolist() == old.weights().tolist():
            for u in range(self.n_uplinks):
                self.wrr[u] = old.wrr[u]
        if self.sticky_on and old.sticky_on:
            self.sticky = old.sticky
            self.sticky.idle_timeout = self.sticky_s
            for u in range(self.n_uplinks):
                if self.weight[u] <= 0:
                    self.sticky.rebind(u, -1)
        return True

    def weights(self):
        """The load-balancing weight of every uplink now (0: no share)."""
        return np.asarray(self.weight)[:self.n_uplinks].copy()

    def rotation(self):
        """The round-robin's current value per uplink (for tests and status)."""
        return np.asarray(self.wrr)[:self.n_uplinks].copy()

    def sticky_sources(self):
        """Source addresses remembered (live or not yet forgotten); 0 when sticky is off."""
        return len(self.sticky) if self.sticky_on else 0

    def scores(self, int service, int preference):
        """F(u) for every uplink (nan for unusable ones) for one (service, preference)."""
        t = self.terms[self.pref_slot[preference]]
        out = np.full(self.n_uplinks, np.nan)
        for u in range(self.n_uplinks):
            if self._usable[u]:
                out[u] = score(self._norm, t, service if 0 <= service <= 3 else 0, u)
        return out

    def normalized(self):
        return self._norm.copy()

    def policy_terms(self, int preference):
        """[(characteristic name, weights per class)] of the policy used for a preference."""
        return [(C.CHAR_NAMES[c], w) for c, w in self.terms[self.pref_slot[preference]]]

    def is_defined(self, int preference):
        return bool(self.pref_defined[preference])

    def choice_table(self):
        """int16[65536, 4]: the uplink a new flow of (preference, service) would get now; for
        load balancing, the first pick of a rotation (the largest weight)."""
        return np.asarray(self.best)[np.asarray(self.pref_slot)]

    def counters(self):
        return {"selected": [int(self.selected[u]) for u in range(self.n_uplinks)],
                "undefined_preference": int(self.undefined), "no_uplink": int(self.no_uplink),
                "sticky": int(self.followed), "resolver_pinned": int(self.res_hits),
                "resolver_down": int(self.res_down)}


def config_resolvers(cfg):
    """[(address text, uplink index)] of the config's [[uplink]] dns lists."""
    return [(a, k) for k, u in enumerate(cfg.uplinks) for a in getattr(u, "dns", [])]


def normalize(chars, usable):
    """Normalised characteristics: 1 is best; computed over the usable uplinks only."""
    n = chars.shape[0]
    norm = np.zeros_like(chars)
    use = usable.astype(bool)
    for j in range(C.N_CHARS):
        col = chars[:, j]
        mx = float(col[use].max()) if use.any() else 0.0
        for u in range(n):
            if not use[u]:
                norm[u, j] = 0.0      # unusable: not scored
            elif mx == 0.0:
                norm[u, j] = 1.0
            elif C.CHAR_BENEFIT[j]:
                norm[u, j] = col[u] / mx
            else:
                norm[u, j] = 1.0 - col[u] / mx
    return norm


def score(norm, terms, int s, int u):
    cdef double f = 0.0
    for c, w in terms:
        f += norm[u, c] * w[s]
    return f


def pick(norm, terms, int s, order):
    """Winner among usable uplinks in (metric, config) order: the first strictly better one."""
    best_u = -1
    best_f = 0.0
    for u in order:
        f = score(norm, terms, s, u)
        if best_u < 0 or f > best_f + TIE:
            best_u, best_f = u, f
    return best_u


def tie_order(norm, terms, cands):
    """cands (in metric, config order) ranked by F of the load-balancing policy (service
    data): the rotation's tie order."""
    rest = list(cands)
    out = []
    while rest:
        u = pick(norm, terms, 0, rest)
        out.append(u)
        rest.remove(u)
    return out
