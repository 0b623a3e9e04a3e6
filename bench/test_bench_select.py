"""Selection of new flows: engine._select vs the pure-Python reference selector."""
import numpy as np

from engine import _select
from engine.config import load_config
from engine.ref import select as ref
from ratio import compare

GATE = 20.0   # a table read (a weighted rotation for load balancing) vs per-flow scoring in Python


def test_gate_select_vs_reference():
    cfg = load_config(None)
    n = 20_000
    rng = np.random.default_rng(1)
    svc = rng.integers(0, 4, n).astype(np.uint8)
    prf = rng.choice([0, 1, 2, 3, 4, 9], n).astype(np.uint16)
    out = np.empty(n, np.int16)
    out_r = np.empty(n, np.int16)
    c, r = _select.Selector(cfg), ref.Selector(cfg)
    res = compare("select new flows", lambda: c.select(svc, prf, out),
                  lambda: r.select(svc, prf, out_r), n, baseline="python reference", rounds=2,
                  min_time=0.01)
    # load balancing turns a rotation per flow: compare fresh selectors over the same flows
    c, r = _select.Selector(cfg), ref.Selector(cfg)
    c.select(svc, prf, out)
    r.select(svc, prf, out_r)
    assert (out == out_r).all()
    assert res.ratio >= GATE, res.line()
