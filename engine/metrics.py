"""Prometheus metrics of ``mmr run`` ([monitor] metrics_listen, off by default).

The HTTP server (prometheus-client) runs in its own thread; it never touches the data path's
structures.  The router's loop publishes a plain snapshot once a second and the collector
turns that snapshot into metric families at scrape time.
"""
from __future__ import annotations

from engine.errors import UserError


class Metrics:
    def __init__(self, listen: str):
        from prometheus_client import CollectorRegistry, start_http_server

        host, _, port = listen.rpartition(":")
        self.snapshot: dict = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        try:
            self.server, self.thread = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        except OSError as exc:
            raise UserError(f"cannot listen for metrics on {listen} ({exc.strerror}); change "
                            f"monitor.metrics_listen or free the port") from None

    def publish(self, snapshot: dict) -> None:
        self.snapshot = snapshot          # one reference swap: the scrape thread sees old or new

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.snapshot
        if not s:
            return
        ups = s["uplinks"]
        g = GaugeMetricFamily("mmr_uplink_usable", "1 when the uplink is usable for new flows", labels=["uplink"])
        rtt = GaugeMetricFamily("mmr_uplink_rtt_seconds", "mean probe round-trip time", labels=["uplink"])
        loss = GaugeMetricFamily("mmr_uplink_probe_loss_ratio", "probes lost in the window", labels=["uplink"])
        flows = GaugeMetricFamily("mmr_uplink_flows", "flows bound to the uplink", labels=["uplink"])
        ch = GaugeMetricFamily("mmr_uplink_characteristic", "V_n value in use (configured or measured)",
                               labels=["uplink", "characteristic"])
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
                ch.add_metric([n, k], v)
        yield from (g, rtt, loss, flows, ch, changes, pk, by)
        c = CounterMetricFamily("mmr_events", "engine counters (see mmr status)", labels=["counter"])
        for k, v in s["counters"].items():
            c.add_metric([k], v)
        yield c
        d = CounterMetricFamily("mmr_drops", "packets dropped, by reason", labels=["reason"])
        for k, v in s["drops"].items():
            d.add_metric([k], v)
        yield d
        f = GaugeMetricFamily("mmr_flows", "flows in the flowbase")
        f.add_metric([], s["flows"])
        yield f

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
