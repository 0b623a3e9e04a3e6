"""engine/metrics.py: Prometheus exposition by the naming conventions.

The collector is rendered with prometheus-client's own exposition (generate_latest) and read
back with its parser, from snapshots made by the engine's own code: the counter table of
engine/counters.py, the characteristics of the built-in policy (engine/config.py) and
Datapath.snapshot / Datapath.reload run on a stand-in engine (no root, no devices).
"""
import platform
import re
import time
import types
import urllib.request
from unittest import mock

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from engine import __version__
from engine import constants as C
from engine import counters as CT
from engine.config import characteristics_matrix, load_config
from engine.datapath import Datapath
from engine.metrics import CHARACTERISTIC_METRICS, EVENT_METRICS, REASON_METRICS, Collector, Metrics

BASE_UNITS = {"bandwidth": ("_bits_per_second", 1e6), "loss": ("_ratio", 1.0),
              "queueing_delay": ("_seconds", 1e-3), "jitter": ("_seconds", 1e-3),
              "power": ("_watts", 1e-3)}


def status(cfg) -> list[dict]:
    """Uplinks as ConnectionManager.status() reports them, from the policy's characteristics."""
    m = characteristics_matrix(cfg)
    return [{"name": u.name, "usable": i == 0, "rtt_ms": 12.5 if i == 0 else None,
             "probe_loss": 0.25 if i == 0 else None, "flows": 3 + i, "changes": 2 * i,
             "characteristics": {n: float(m[i, j]) for j, n in enumerate(C.CHAR_NAMES)}}
            for i, u in enumerate(cfg.uplinks)]


def engine(cfg, table):
    """A stand-in Datapath with what snapshot() and reload() use."""
    t0 = time.time()
    return types.SimpleNamespace(
        cfg=cfg, reloads=0, started=t0, last_reload_ok=True, last_reload_success_s=t0,
        table=lambda: table.copy(), uplink_sent=lambda i: (100 * (i + 1), 150_000 * (i + 1)),
        conn=mock.MagicMock(**{"status.return_value": status(cfg)}),
        pipe=mock.MagicMock(flows=list(range(5))), control=mock.MagicMock(),
        inside=mock.MagicMock(default_policy="default.toml", **{"refuse_added.return_value": None}),
        fw=types.SimpleNamespace(lan_net=np.zeros((16, 17), np.uint8), set_strip=lambda cfg: None),
        workers=[], n_flows=lambda: 5, _conn_views=lambda: (None, None), _tables_changed=lambda: None,
        n_up=len(cfg.uplinks),                # its uplink slots: as many as the policy's uplinks
        _config_resolvers=lambda cfg: None, _push_resolvers=lambda: None, edge=None)


def render(snapshot) -> dict:
    """name -> family, as a Prometheus server would read the scrape."""
    c = Collector()
    c.publish(snapshot)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(c)
    text = generate_latest(reg).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}, text


def value(fams, name, **labels):
    got = [s.value for f in fams.values() for s in f.samples if s.name == name and s.labels == labels]
    assert len(got) == 1, (name, labels, got)
    return got[0]


@pytest.fixture
def cfg():
    return load_config(None)


def test_build_info_before_and_after_the_first_snapshot(cfg):
    for snap in ({}, Datapath.snapshot(engine(cfg, CT.new_table()))):
        fams, _ = render(snap)
        (s,) = fams["mmr_build_info"].samples
        assert s.value == 1.0 and fams["mmr_build_info"].type == "gauge"
        assert s.labels["version"] == __version__ and s.labels["python"] == platform.python_version()
        assert re.fullmatch(r"\d+\.\d+(\.\d+)*", s.labels["cython"]), s.labels


def test_every_drop_reason_from_zero_then_counted(cfg):
    table = CT.new_table()
    fams, _ = render(Datapath.snapshot(engine(cfg, table)))
    fam = fams["mmr_dropped_frames"]
    assert fam.type == "counter"
    got = {s.labels["reason"]: s.value for s in fam.samples if s.name == "mmr_dropped_frames_total"}
    want = [name for _, name, action in C.REASONS if action == "drop"]
    assert len(want) >= 10 and got == {name: 0.0 for name in want}
    table[CT.INDEX["no_uplink"]] += 3
    fams, _ = render(Datapath.snapshot(engine(cfg, table)))
    assert value(fams, "mmr_dropped_frames_total", reason="no_uplink") == 3.0
    assert value(fams, "mmr_dropped_frames_total", reason="hop_limit") == 0.0


def test_one_metric_per_characteristic_in_base_units(cfg):
    fams, text = render(Datapath.snapshot(engine(cfg, CT.new_table())))
    assert set(CHARACTERISTIC_METRICS) == set(C.CHAR_NAMES)
    m = characteristics_matrix(cfg)
    for j, ch in enumerate(C.CHAR_NAMES):
        name = CHARACTERISTIC_METRICS[ch][0]
        if ch in BASE_UNITS:
            suffix, factor = BASE_UNITS[ch]
            assert name.endswith(suffix), name
        else:
            factor = 1.0
        assert fams[name].type == "gauge"
        for i, u in enumerate(cfg.uplinks):
            assert value(fams, name, uplink=u.name) == pytest.approx(m[i, j] * factor)
    # the built-in policy's ar1: 20 Mbit/s, 30 ms, 5 ms, 800 mW
    assert value(fams, "mmr_uplink_bandwidth_bits_per_second", uplink="ar1") == 20e6
    assert value(fams, "mmr_uplink_queueing_delay_seconds", uplink="ar1") == pytest.approx(0.030)
    assert value(fams, "mmr_uplink_jitter_seconds", uplink="ar1") == pytest.approx(0.005)
    assert value(fams, "mmr_uplink_power_watts", uplink="ar1") == pytest.approx(0.8)
    assert value(fams, "mmr_uplink_rtt_seconds", uplink="ar1") == pytest.approx(0.0125)
    assert "mmr_uplink_characteristic" not in text and "mmr_events" not in text


def test_every_counter_its_own_metric_with_its_value(cfg):
    table = CT.new_table()
    table[:] = np.arange(1, CT.SIZE + 1, dtype=np.uint64) * 7      # every counter different
    fams, text = render(Datapath.snapshot(engine(cfg, table)))
    exported = set(EVENT_METRICS) | set(REASON_METRICS) | set(CT.DROP_REASONS)
    assert exported == set(CT.NAMES) and len(exported) == CT.SIZE
    for k, name in EVENT_METRICS.items():
        assert value(fams, name + "_total") == float(table[CT.INDEX[k]]), k
        assert fams[name].documentation == CT.HELP[k]
    for k, (name, _) in REASON_METRICS.items():
        assert value(fams, name + "_total") == float(table[CT.INDEX[k]]), k
    for k in CT.DROP_REASONS:
        assert value(fams, "mmr_dropped_frames_total", reason=k) == float(table[CT.INDEX[k]])
    assert value(fams, "mmr_rx_inside_frames_total") == float(table[CT.INDEX["rx_inside"]])
    assert value(fams, "mmr_uplink_packets_total", uplink="ar2") == 200.0
    assert value(fams, "mmr_uplink_bytes_total", uplink="ar2") == 300_000.0
    assert value(fams, "mmr_flows") == 5.0


# the exposition, sample names as scraped: dashboards and alerts depend on these
EXPOSITION = {
    "mmr_build_info", "mmr_flows",
    "mmr_uplink_usable", "mmr_uplink_rtt_seconds", "mmr_uplink_probe_loss_ratio", "mmr_uplink_flows",
    "mmr_uplink_bandwidth_bits_per_second", "mmr_uplink_loss_ratio", "mmr_uplink_queueing_delay_seconds",
    "mmr_uplink_jitter_seconds", "mmr_uplink_qos_ratio", "mmr_uplink_security_ratio",
    "mmr_uplink_power_watts", "mmr_uplink_cost",
    "mmr_uplink_state_changes_total", "mmr_uplink_packets_total", "mmr_uplink_bytes_total",
    "mmr_rx_inside_frames_total", "mmr_rx_uplink_frames_total", "mmr_tx_uplink_frames_total",
    "mmr_tx_inside_frames_total", "mmr_kernel_frames_total", "mmr_handover_frames_total",
    "mmr_checksums_finished_total", "mmr_super_frames_total", "mmr_icmp_errors_sent_total",
    "mmr_icmp_errors_rate_limited_total", "mmr_neighbour_resolutions_total", "mmr_tx_errors_total",
    "mmr_truncated_frames_total", "mmr_ring_dropped_frames_total", "mmr_internal_errors_total",
    "mmr_untrusted_options_total", "mmr_reserved_preference_options_total",
    "mmr_lan_device_vanished_total",
    "mmr_parsed_frames_total", "mmr_not_ip_frames_total", "mmr_unknown_next_header_frames_total",
    "mmr_dropped_frames_total",
    "mmr_config_last_reload_successful", "mmr_config_last_reload_success_timestamp_seconds",
    "mmr_config_reloads_total",
}


def test_exposition_names(cfg):
    fams, _ = render(Datapath.snapshot(engine(cfg, CT.new_table())))
    assert {s.name for f in fams.values() for s in f.samples} == EXPOSITION


def test_naming_conventions(cfg):
    fams, _ = render(Datapath.snapshot(engine(cfg, CT.new_table())))
    assert len(fams) > 30
    for f in fams.values():
        assert f.name.startswith("mmr_")
        assert not re.search(r"(mbps|mbit|_ms$|_ms_|_mw|milli|percent|kbit)", f.name), f.name
        for s in f.samples:
            if f.type == "counter":
                assert s.name.endswith(("_total", "_created")), s.name
            else:
                assert not s.name.endswith("_total"), s.name


def test_reload_success_and_failure(cfg, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(_default_text())
    eng = engine(load_config(str(policy)), CT.new_table())
    start = eng.started
    fams, _ = render(Datapath.snapshot(eng))
    assert value(fams, "mmr_config_last_reload_successful") == 1.0     # the start's load
    assert value(fams, "mmr_config_last_reload_success_timestamp_seconds") == start
    assert value(fams, "mmr_config_reloads_total") == 0.0

    before = time.time()
    assert Datapath.reload(eng)["ok"] is True
    fams, _ = render(Datapath.snapshot(eng))
    assert value(fams, "mmr_config_last_reload_successful") == 1.0
    ok_at = value(fams, "mmr_config_last_reload_success_timestamp_seconds")
    assert before <= ok_at <= time.time()
    assert value(fams, "mmr_config_reloads_total") == 1.0

    policy.write_text("[[uplink]]\nname = 7\n")                        # invalid: rejected
    res = Datapath.reload(eng)
    assert res["ok"] is False and "rejected" in res["message"]
    fams, _ = render(Datapath.snapshot(eng))
    assert value(fams, "mmr_config_last_reload_successful") == 0.0
    assert value(fams, "mmr_config_last_reload_success_timestamp_seconds") == ok_at
    assert value(fams, "mmr_config_reloads_total") == 1.0

    policy.write_text(_default_text())                                # fixed: back to 1
    assert Datapath.reload(eng)["ok"] is True
    fams, _ = render(Datapath.snapshot(eng))
    assert value(fams, "mmr_config_last_reload_successful") == 1.0
    assert value(fams, "mmr_config_last_reload_success_timestamp_seconds") >= ok_at


def _default_text() -> str:
    from importlib import resources

    return resources.files("engine").joinpath("default.toml").read_text()


def test_served_over_http(cfg):
    m = Metrics("127.0.0.1:0")
    try:
        url = f"http://127.0.0.1:{m.server.server_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        names = {f.name for f in text_string_to_metric_families(text)}
        assert names == {"mmr_build_info"}                            # nothing published yet
        m.publish(Datapath.snapshot(engine(cfg, CT.new_table())))
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert value(fams, "mmr_dropped_frames_total", reason="no_uplink") == 0.0
        assert value(fams, "mmr_uplink_power_watts", uplink="ar2") == pytest.approx(1.2)
    finally:
        m.close()
