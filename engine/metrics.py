"""Prometheus metrics of ``mmr run`` ([monitor] metrics_listen, off by default).

The HTTP server (prometheus-client) runs in its own thread; it never touches the data path's
structures.  The router's loop publishes a plain snapshot once a second (Datapath.snapshot)
and the collector turns that snapshot into metric families at scrape time.

Conventions (https://prometheus.io/docs/practices/naming/): base units in the name (bits
per second, seconds, watts, bytes; ratios 0..1, not percent), one metric per quantity (no
metric mixing units or unrelated counters behind a label), counters end in ``_total``, every
drop reason is exported from the start (0 until it happens), and ``mmr_build_info`` is 1
with the versions as labels.
"""
from __future__ import annotations

import platform
import re
import sys

from engine import __version__
from engine import counters as CT
from engine.errors import UserError

# characteristic (engine.constants.CHARACTERISTICS, units of engine/config.py's UPLINK_KEYS)
#   -> (metric name, factor from the configured unit to the base unit, help)
CHARACTERISTIC_METRICS = {
    "bandwidth": ("mmr_uplink_bandwidth_bits_per_second", 1e6,
                  "bandwidth of the uplink (configured bandwidth_mbps, in bits per second)"),
    "loss": ("mmr_uplink_loss_ratio", 1.0, "loss rate of the uplink, 0..1 (configured or measured)"),
    "queueing_delay": ("mmr_uplink_queueing_delay_seconds", 1e-3,
                       "queueing delay of the uplink (configured queueing_delay_ms or measured)"),
    "jitter": ("mmr_uplink_jitter_seconds", 1e-3, "jitter of the uplink (configured jitter_ms or measured)"),
    "qos": ("mmr_uplink_qos_ratio", 1.0, "QoS support of the uplink, 0 (none) to 1 (full)"),
    "security": ("mmr_uplink_security_ratio", 1.0, "protection the uplink offers, 0 (none) to 1 (full)"),
    "power": ("mmr_uplink_power_watts", 1e-3, "power the uplink's interface draws (configured power_mw)"),
    "cost": ("mmr_uplink_cost", 1.0, "cost figure of the uplink (configured cost, no unit)"),
}

# engine/counters.py EVENTS -> metric name (a counter; prometheus-client adds "_total")
EVENT_METRICS = {
    "rx_inside": "mmr_rx_inside_frames",
    "rx_uplink": "mmr_rx_uplink_frames",
    "tx_uplink": "mmr_tx_uplink_frames",
    "tx_inside": "mmr_tx_inside_frames",
    "kernel": "mmr_kernel_frames",
    "handover": "mmr_handover_frames",
    "csum_finished": "mmr_checksums_finished",
    "super_frames": "mmr_super_frames",
    "icmp_sent": "mmr_icmp_errors_sent",
    "icmp_limited": "mmr_icmp_errors_rate_limited",
    "neighbour_asked": "mmr_neighbour_resolutions",
    "tx_errors": "mmr_tx_errors",
    "truncated": "mmr_truncated_frames",
    "ring_drops": "mmr_ring_dropped_frames",
    "internal_errors": "mmr_internal_errors",
    "untrusted_option": "mmr_untrusted_options",
    "reserved_preference": "mmr_reserved_preference_options",
    "lan_gone": "mmr_lan_device_vanished",
}

# reasons that are not drops (engine.constants.REASONS) -> (metric name, help)
REASON_METRICS = {
    "ok": ("mmr_parsed_frames", "frames the parser accepted (reason ok)"),
    "not_ip": ("mmr_not_ip_frames", "frames neither IPv4 nor IPv6, left to this machine's kernel"),
    "unknown_nh": ("mmr_unknown_next_header_frames",
                   "frames with an unknown next header: forwarded, flows keyed without ports"),
}


def _cython_version() -> str:
    """The Cython that compiled the stages: its shared-ABI module (``_cython_3_0_11``) is
    loaded with them; the installed Cython if that is not found."""
    import importlib

    importlib.import_module("engine._parse")     # a compiled stage: loads the ABI module

    for name in list(sys.modules):
        m = re.fullmatch(r"_cython_(\d+(?:_\d+)*)", name)
        if m:
            return m.group(1).replace("_", ".")
    try:
        import Cython
    except ImportError:
        return "unknown"
    return Cython.__version__


BUILD_INFO = {"version": __version__, "python": platform.python_version(), "cython": _cython_version()}


class Collector:
    """Metric families from the last published snapshot (a prometheus-client collector)."""

    def __init__(self):
        self.snapshot: dict = {}

    def publish(self, snapshot: dict) -> None:
        self.snapshot = snapshot          # one reference swap: the scrape thread sees old or new

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        b = GaugeMetricFamily("mmr_build_info", "mmr's version and the Python and Cython it runs on; always 1",
                              labels=list(BUILD_INFO))
        b.add_metric(list(BUILD_INFO.values()), 1.0)
        yield b
        s = self.snapshot
        if not s:
            return
        ups = s["uplinks"]
        g = GaugeMetricFamily("mmr_uplink_usable", "1 when the uplink is usable for new flows", labels=["uplink"])
        rtt = GaugeMetricFamily("mmr_uplink_rtt_seconds", "mean probe round-trip time", labels=["uplink"])
        loss = GaugeMetricFamily("mmr_uplink_probe_loss_ratio", "probes lost in the window, 0..1",
                                 labels=["uplink"])
        flows = GaugeMetricFamily("mmr_uplink_flows", "flows bound to the uplink", labels=["uplink"])
        chars = {k: GaugeMetricFamily(name, help_, labels=["uplink"])
                 for k, (name, _, help_) in CHARACTERISTIC_METRICS.items()}
        changes = CounterMetricFamily("mmr_uplink_state_changes", "usable/unusable transitions", labels=["uplink"])
        pk = CounterMetricFamily("mmr_uplink_packets", "packets sent on the uplink", labels=["uplink"])
        by = CounterMetricFamily("mmr_uplink_bytes", "bytes sent on the uplink", labels=["uplink"])
        for u in ups:
            n = u["name"]
            g.add_metric([n], 1.0 if u["usable"] else 0.0)
            if u["rtt_ms"] is not None:
                rtt.add_metric([n], u["rtt_ms"] / 1000)
            if u["probe_loss"] is not None:
                loss.add_metric([n], u["probe_loss"])
            flows.add_metric([n], u["flows"])
            changes.add_metric([n], u["changes"])
            pk.add_metric([n], s["uplink_packets"].get(n, 0))
            by.add_metric([n], s["uplink_bytes"].get(n, 0))
            for k, v in u["characteristics"].items():
                chars[k].add_metric([n], v * CHARACTERISTIC_METRICS[k][1])
        yield from (g, rtt, loss, flows, *chars.values(), changes, pk, by)
        counters = s["counters"]
        for k, name in EVENT_METRICS.items():
            c = CounterMetricFamily(name, CT.HELP[k])
            c.add_metric([], counters[k])
            yield c
        for k, (name, help_) in REASON_METRICS.items():
            c = CounterMetricFamily(name, help_)
            c.add_metric([], counters[k])
            yield c
        d = CounterMetricFamily("mmr_dropped_frames", "frames dropped, by reason (every reason, 0 until it happens)",
                                labels=["reason"])
        for k, v in s["drops"].items():
            d.add_metric([k], v)
        yield d
        f = GaugeMetricFamily("mmr_flows", "flows in the flowbase")
        f.add_metric([], s["flows"])
        yield f
        r = s.get("reload")
        if r is not None:
            ok = GaugeMetricFamily("mmr_config_last_reload_successful",
                                   "1 when the last policy reload succeeded (or none was tried), 0 when rejected")
            ok.add_metric([], 1.0 if r["successful"] else 0.0)
            ts = GaugeMetricFamily("mmr_config_last_reload_success_timestamp_seconds",
                                   "when the policy was last loaded successfully (at start or by a reload), "
                                   "Unix time")
            ts.add_metric([], r["success_time"])
            n = CounterMetricFamily("mmr_config_reloads", "policy reloads that succeeded")
            n.add_metric([], r["reloads"])
            yield from (ok, ts, n)


class Metrics(Collector):
    """The collector served over HTTP on ``listen`` (host:port)."""

    def __init__(self, listen: str):
        from prometheus_client import CollectorRegistry, start_http_server

        super().__init__()
        host, _, port = listen.rpartition(":")
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        try:
            self.server, self.thread = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        except OSError as exc:
            raise UserError(f"cannot listen for metrics on {listen} ({exc.strerror}); change "
                            f"monitor.metrics_listen or free the port") from None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
