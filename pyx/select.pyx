# cython: language_level=3
"""select: (service, preference) of new flows -> uplink index, by the metric function.

Takes   per uplink the eight characteristics (configured, or live values later), the usable
        mask and the metric; the policies of the config (preference -> V_n, V_t).
Emits   out[i] = uplink index, or -1 when no uplink is usable (the pipeline drops with
        reason no_uplink).
Counts  selected per uplink, undefined_preference (fell back to 0), no_uplink.

Normalisation across the usable uplinks so that 1 is always best: benefit characteristics
x / max(x), cost characteristics 1 - x / max(x), 1 for all when max is 0.  For preference p
and service s, F(u) = sum_k norm[u, V_n[k]] * V_t[k](s); the highest F wins; scores within
1e-9 are a tie, broken by the lower metric, then config order.  Preference 0 has no terms:
every score is 0 and the lowest metric wins (the primary).

Scores depend only on (preference, service), so ``update`` computes the winner of every
(policy, service) pair once; ``select`` is then a gather over the batch.
"""
from libc.stdint cimport uint8_t, uint16_t, int16_t, int64_t, uint64_t

import numpy as np
from engine import constants as C

DEF TIE = 1e-9


cdef class Selector:

    def __init__(self, cfg):
        from engine.config import characteristics_matrix

        self.n_uplinks = len(cfg.uplinks)
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
        self.selected = np.zeros(max(self.n_uplinks, 1), np.uint64)
        self.update(characteristics_matrix(cfg),
                    np.array([u.usable for u in cfg.uplinks], np.uint8),
                    np.array([u.metric for u in cfg.uplinks], np.float64))

    def update(self, chars, usable, metric=None):
        """New characteristics / usable mask / metrics: recompute every winner."""
        chars = np.ascontiguousarray(chars, dtype=np.float64)
        usable = np.ascontiguousarray(usable, dtype=np.uint8)
        if chars.shape != (self.n_uplinks, C.N_CHARS) or usable.shape != (self.n_uplinks,):
            raise ValueError(f"expected chars[{self.n_uplinks}, {C.N_CHARS}] and usable[{self.n_uplinks}]")
        if metric is None:
            metric = self._metric if self._metric is not None else np.arange(self.n_uplinks, dtype=np.float64)
        metric = np.ascontiguousarray(metric, dtype=np.float64)
        self._chars, self._usable, self._metric = chars.copy(), usable.copy(), metric.copy()
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
        self.best = best

    def select(self, uint8_t[::1] service, uint16_t[::1] pref, int16_t[::1] out, Py_ssize_t n=-1):
        """out[i] = uplink for (service[i], pref[i]), i < n; -1 when none is usable."""
        if n < 0:
            n = service.shape[0]
        if n > service.shape[0] or n > pref.shape[0] or n > out.shape[0]:
            raise ValueError("n is larger than the arrays")
        if n == 0:
            return
        with nogil:
            self.select_c(&service[0], &pref[0], &out[0], n)

    cdef void select_c(self, const uint8_t* service, const uint16_t* pref, int16_t* out,
                       Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t i
        cdef int s, u
        cdef uint16_t p
        for i in range(n):
            p = pref[i]
            if not self.pref_defined[p]:
                self.undefined += 1
            s = service[i]
            if s > 3:
                s = 0
            u = self.best[self.pref_slot[p], s]
            out[i] = <int16_t>u
            if u < 0:
                self.no_uplink += 1
            else:
                self.selected[u] += 1

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
        """int16[65536, 4]: the uplink a new flow of (preference, service) would get now."""
        return np.asarray(self.best)[np.asarray(self.pref_slot)]

    def counters(self):
        return {"selected": [int(self.selected[u]) for u in range(self.n_uplinks)],
                "undefined_preference": int(self.undefined), "no_uplink": int(self.no_uplink)}


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
