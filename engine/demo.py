"""``mmr demo``: the draft's section 6 experiment, end to end, on this machine (``--topology
isp``: across the ISP testbed, IPv4 and IPv6 through the translations; IspDemo below).

    build the testbed  ->  count on AR1 and AR2 (nftables)  ->  mmr run on the MMR
    ->  tagged video MN -> CN  +  untagged UDP echo MN <-> CN  ->  read the counters
    ->  stop mmr (its summary line)  ->  tear the testbed down

Every number printed is read from the kernel (nftables counters on the ARs, sockets on CN)
or from the engine; the expectation comes from the policy's own choice table.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time

from engine import constants as C
from engine.errors import UserError
from engine.testbed import CN_ADDR, ISP, ISP_CN_ADDR4, ISP_MN_ADDR, ISP_MN_ADDR4, Testbed

# 'python -m engine ...' in a child looks in its working directory first: run the children
# where the engine this process imported lives, so a source checkout next to an installed
# mmr (the README's 'pip install . && mmr demo' in the clone) cannot shadow it.
ENGINE_HOME = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ISP_POLICY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo-isp.toml")

VIDEO_PORT = 5004
ECHO_PORT = 7
AR_NODES = ("ar1", "ar2")


def _counters_table(port_video: int, port_echo: int) -> str:
    # forward-hook counters on an AR: packets it carried MN -> CN for each exchange
    return (
        "table inet mmrdemo {\n chain forward {\n  type filter hook forward priority 0; policy accept;\n"
        f'  ip6 daddr {CN_ADDR} udp dport {port_video} counter comment "video"\n'
        f'  ip6 daddr {CN_ADDR} udp dport {port_echo} counter comment "echo"\n'
        f'  ip6 saddr {CN_ADDR} udp sport {port_echo} counter comment "echo-reply"\n'
        " }\n}\n"
    )


def read_counters(tb: Testbed, node: str) -> dict[str, int]:
    out = tb.run(node, "nft", "-j", "list", "table", "inet", "mmrdemo")
    got = {}
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if not rule:
            continue
        for e in rule["expr"]:
            if "counter" in e:
                got[rule.get("comment", "?")] = int(e["counter"]["packets"])
    return got


class Demo:
    default_policy = None            # the built-in default.toml (mmr run's own default)

    def __init__(self, prefix: str, cfg_path: str | None, packets: int, keep: bool, out=sys.stdout):
        self.prefix, self.cfg_path, self.packets, self.keep, self.out = prefix, cfg_path, packets, keep, out

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def check_host(self) -> None:
        if os.geteuid() != 0:
            raise UserError("mmr demo builds network namespaces and runs the router; run it as root")
        missing = [t for t in ("ip", "nft") if shutil.which(t) is None]
        if missing:
            raise UserError(f"mmr demo needs {', '.join(missing)}; install them with "
                            f"'apt-get install -y iproute2 nftables'")

    def expectations(self):
        from engine import _select
        from engine.config import load_config

        cfg = load_config(self.cfg_path)
        table = _select.Selector(cfg).choice_table()
        video = cfg.uplinks[table[2, C.SERVICE_VIDEO]].name
        echo = cfg.uplinks[table[cfg.default_preference, C.SERVICE_DATA]].name
        return cfg, video, echo

    def run(self) -> int:
        self.check_host()
        cfg, exp_video, exp_echo = self.expectations()
        names = [u.name for u in cfg.uplinks]
        if sorted(u.device for u in cfg.uplinks) != ["up1", "up2"] or cfg.lan != "lan0":
            raise UserError("the demo's testbed has lan0, up1 and up2; give a policy file whose "
                            "[engine] lan is lan0 and whose uplinks use devices up1 and up2")
        ar_of = {u.name: {"up1": "ar1", "up2": "ar2"}[u.device] for u in cfg.uplinks}
        self.say("mmr demo: draft-park-mis section 6 on this machine\n")
        self.say("policy: " + (self.cfg_path or "built-in default"))
        for u in cfg.uplinks:
            ch = u.chars
            self.say(f"  {u.name:<5} via {u.device} -> {ar_of[u.name].upper()}: qos={ch['qos']:g} "
                     f"bandwidth={ch['bandwidth']:g} Mb/s queueing={ch['queueing_delay']:g} ms "
                     f"loss={ch['loss']:g} cost={ch['cost']:g}")
        lb = " (load balancing: the first new flow goes to the largest weight)" \
            if cfg.default_preference == 3 else ""
        self.say(f"  the metric function chooses: video+QoS -> {exp_video}, "
                 f"untagged (preference {cfg.default_preference}{lb}) -> {exp_echo}\n")

        tb = Testbed(self.prefix)
        self.say(f"building the testbed (namespaces {self.prefix}mn/mmr/ar1/ar2/cn) ...")
        (video_rx, echo), counts, summary = self._in_testbed(
            tb, AR_NODES, _counters_table(VIDEO_PORT, ECHO_PORT), self._traffic)
        return self._report(names, ar_of, exp_video, exp_echo, counts, video_rx, echo, summary)

    def _in_testbed(self, tb: Testbed, nodes, counters: str, traffic):
        """Build tb, put the counters table on nodes, start mmr run, run traffic(tb); returns
        (what traffic returned, the counters, mmr's summary).  mmr is stopped and the
        testbed removed (unless --keep) whatever happens."""
        tb.up()
        router = None
        try:
            for node in nodes:
                subprocess.run(["ip", "netns", "exec", tb.ns(node), "nft", "-f", "-"], input=counters,
                               text=True, check=True, capture_output=True)
            router = self._start_router(tb)
            self.say(f"mmr run started on {self.prefix}mmr\n")
            result = traffic(tb)
            counts = {node: read_counters(tb, node) for node in nodes}
            summary = self._stop_router(router)
            router = None
            return result, counts, summary
        finally:
            if router is not None:
                self._stop_router(router)
            if self.keep:
                self.say(f"\ntestbed kept; remove it with 'mmr testbed down --prefix {self.prefix}'")
            else:
                tb.down()
                self.say("\ntestbed removed")

    def _start_router(self, tb: Testbed):
        cmd = ["ip", "netns", "exec", tb.ns("mmr"), sys.executable, "-m", "engine", "run",
               "--stats-interval", "0"]
        if self.cfg_path or self.default_policy:
            cmd += ["--config", os.path.abspath(self.cfg_path or self.default_policy)]
        p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ENGINE_HOME)
        lines = []
        while True:
            line = p.stderr.readline()
            if not line:
                raise UserError("mmr run did not start: " + " ".join(x.strip() for x in lines))
            lines.append(line)
            if "forwarding" in line:
                return p

    def _stop_router(self, p) -> str:
        p.terminate()
        try:
            _, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        lines = [line for line in err.splitlines() if line.startswith("mmr: rx_inside=")]
        return lines[-1] if lines else "(no summary: " + err.strip()[-200:] + ")"

    def _peer(self, tb, node, *args, wait=True):
        cmd = ["ip", "netns", "exec", tb.ns(node), sys.executable, "-m", "engine.peers", *map(str, args)]
        if wait:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ENGINE_HOME)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ENGINE_HOME)
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"peer {args[0]} on {node} did not start: {p.stderr.read()}")
        return p

    def _traffic(self, tb):
        n = self.packets
        seconds = n * 0.004 + 4
        sink = self._peer(tb, "cn", "udp-count", VIDEO_PORT, seconds, wait=False)
        echo_srv = self._peer(tb, "cn", "echo-server", ECHO_PORT, seconds, CN_ADDR, wait=False)
        self.say(f"MN -> CN: {n} video datagrams of 1200 bytes, tagged (service video, preference QoS)")
        self.say("MN <-> CN: 20 untagged UDP echo requests (port 7)")
        video = subprocess.Popen(["ip", "netns", "exec", tb.ns("mn"), sys.executable, "-m", "engine.peers",
                                  *map(str, ("udp-send", CN_ADDR, VIDEO_PORT, n, 3, 2, 1200, 0.003))],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ENGINE_HOME)
        echo = self._peer(tb, "mn", "echo-client", CN_ADDR, ECHO_PORT, 20)
        video.wait(timeout=seconds + 30)
        time.sleep(0.3)                  # the last datagrams are in flight
        sink.terminate()
        echo_srv.terminate()
        out, _ = sink.communicate(timeout=10)
        echo_srv.communicate(timeout=10)
        video_rx = json.loads(out.strip().splitlines()[-1])["datagrams"]
        if echo.returncode != 0:
            raise RuntimeError("echo client failed: " + echo.stderr.strip())
        return video_rx, json.loads(echo.stdout)

    def _report(self, names, ar_of, exp_video, exp_echo, counts, video_rx, echo, summary) -> int:
        self.say("")
        self.say("carried by (nftables counters read on each AR):")
        self.say(f"  {'flow':<28}{'AR1':>8}{'AR2':>8}   expected   result")
        ok = True
        rows = [("video (tagged, QoS)", "video", exp_video),
                ("echo requests (untagged)", "echo", exp_echo)]
        for label, key, exp in rows:
            a1, a2 = counts["ar1"].get(key, 0), counts["ar2"].get(key, 0)
            want = ar_of[exp]
            good = (a1 > 0 and a2 == 0) if want == "ar1" else (a2 > 0 and a1 == 0)
            ok &= good
            self.say(f"  {label:<28}{a1:>8}{a2:>8}   {want.upper():<9}  {'as expected' if good else 'NOT as expected'}")
        r1, r2 = counts["ar1"].get("echo-reply", 0), counts["ar2"].get("echo-reply", 0)
        self.say(f"  {'echo replies (CN -> MN)':<28}{r1:>8}{r2:>8}   (CN's own route: multipath)")
        self.say("")
        self.say(f"at CN: {video_rx}/{self.packets} video datagrams received; echo {echo['answered']}/"
                 f"{echo['sent']} answered, median RTT {echo['rtt_ms']} ms")
        self.say(f"engine: {summary}")
        delivered = video_rx >= 0.95 * self.packets and echo["answered"] >= 0.9 * echo["sent"]
        if not delivered:
            self.say("delivery below 95 % (video) / 90 % (echo)")
        ok &= delivered
        self.say("")
        self.say("result: " + ("video via AR1 and echo via AR2, as in draft section 6.2"
                               if ok and (ar_of[exp_video], ar_of[exp_echo]) == ("ar1", "ar2")
                               else "as the policy predicts" if ok else "NOT as the policy predicts"))
        return 0 if ok else 1


# --topology isp: the same experiment across two ISPs that route nothing to the LAN and drop
# foreign sources, once per family.  The counters sit before the ISPs' BCP 38 rule (priority
# -10): a packet that left with the wrong source is counted, then dropped, and CN misses it.
ISP_NODES = ("isp1", "isp2")
ISP_DEVICE_NODE = {"up1": "isp1", "up2": "isp2"}
VIDEO_DSCP = 34                          # AF41: the IPv4 video's mark (no option in IPv4)
ISP_CN4 = "::ffff:" + ISP_CN_ADDR4       # CN's IPv4 address, as an IPv6 socket writes it
ISP_FLOWS = (  # key, label, family, port, (service, preference) of the option or None, DSCP
    ("video6", "IPv6 video (tagged, QoS)", 6, VIDEO_PORT, (C.SERVICE_VIDEO, 2), 0),
    ("video4", "IPv4 video (AF41)", 4, VIDEO_PORT, None, VIDEO_DSCP),
    ("echo6", "IPv6 echo requests", 6, ECHO_PORT, None, 0),
    ("echo4", "IPv4 echo requests", 4, ECHO_PORT, None, 0),
)


def _isp_counters_table() -> str:
    rules = []
    for fam, cn in (("ip", ISP_CN_ADDR4), ("ip6", CN_ADDR)):
        k = "4" if fam == "ip" else "6"
        rules += [f'  {fam} daddr {cn} udp dport {VIDEO_PORT} counter comment "video{k}"',
                  f'  {fam} daddr {cn} udp dport {ECHO_PORT} counter comment "echo{k}"',
                  f'  {fam} saddr {cn} udp sport {ECHO_PORT} counter comment "echo{k}-reply"']
    return ("table inet mmrdemo {\n chain forward {\n  type filter hook forward priority -10; policy accept;\n"
            + "\n".join(rules) + "\n }\n}\n")


def _row(family: int, port: int, option, dscp: int) -> dict:
    """What the classifier reads of a flow's first packet (MN's sender)."""
    src = ipaddress.ip_address(ISP_MN_ADDR if family == 6 else "::ffff:" + ISP_MN_ADDR4)
    dst = ipaddress.ip_address(CN_ADDR if family == 6 else ISP_CN4)
    return {"has_opt": option is not None, "service": option[0] if option else 0,
            "preference": option[1] if option else 0, "proto": 17, "sport": 40000, "dport": port,
            "tclass": dscp << 2, "src": src.packed, "dst": dst.packed, "family": family, "flags": C.F_L4}


class IspDemo(Demo):
    """``mmr demo --topology isp``: the draft's outcome across the ISP testbed, IPv4 and IPv6,
    with which ISP carried each flow, what CN received and from which (translated) source."""

    default_policy = ISP_POLICY

    def expectations(self):
        from engine import _select
        from engine.config import load_config
        from engine.ref.classify import Classifier

        cfg = load_config(self.cfg_path or ISP_POLICY)
        table = _select.Selector(cfg).choice_table()
        cls = Classifier(cfg)
        want = {}
        for key, _, fam, port, option, dscp in ISP_FLOWS:
            service, pref = cls.classify_row(_row(fam, port, option, dscp))
            want[key] = cfg.uplinks[table[pref, service]]
        return cfg, want

    def run(self) -> int:
        self.check_host()
        cfg, want = self.expectations()
        if sorted(u.device for u in cfg.uplinks) != ["up1", "up2"] or cfg.lan != "lan0":
            raise UserError("the ISP testbed has lan0, up1 (ISP1) and up2 (ISP2, an L3 link); give a "
                            "policy file whose [engine] lan is lan0 and whose uplinks use devices up1 and up2")
        self.say("mmr demo --topology isp: draft-park-mis section 6 across two ISPs, IPv4 and IPv6\n")
        self.say("policy: " + (self.cfg_path or f"built-in ISP policy ({ISP_POLICY})"))
        for u in cfg.uplinks:
            ch = u.chars
            link = "an L3 link" if u.device == "up2" else "Ethernet"
            self.say(f"  {u.name:<5} via {u.device} ({link}) -> {ISP_DEVICE_NODE[u.device].upper()}: "
                     f"qos={ch['qos']:g} bandwidth={ch['bandwidth']:g} Mb/s "
                     f"queueing={ch['queueing_delay']:g} ms; {self._translation(u)}")
        self.say("  the metric function chooses: " + ", ".join(
            f"{label.replace(' requests', '')} -> {want[key].name}" for key, label, *_ in ISP_FLOWS) + "\n")

        tb = Testbed(self.prefix, ISP)
        self.say(f"building the ISP testbed (namespaces {self.prefix}mn/mmr/isp1/isp2/cn; a private "
                 f"LAN, BCP 38 at both ISPs, CN with no route to the LAN) ...")
        (own, got), counts, summary = self._in_testbed(
            tb, ISP_NODES, _isp_counters_table(),
            lambda tb: ({u.name: self._addresses(tb, u.device) for u in cfg.uplinks}, self._isp_traffic(tb)))
        return self._isp_report(cfg, want, own, counts, got, summary)

    @staticmethod
    def _translation(u) -> str:
        v4 = {"none": "IPv4 untranslated", "masquerade": "IPv4 to its address",
              "auto": "private IPv4 to its address"}.get(u.nat, u.nat)
        v6 = f"IPv6 mapped to {u.npt_prefix}" if u.nat6 == "npt" and u.npt_prefix else \
            "IPv6 mapped to its prefix" if u.nat6 == "npt" else "IPv6 untranslated"
        return f"{v4}, {v6}"

    @staticmethod
    def _addresses(tb, dev) -> list:
        """The uplink's global addresses, from the MMR's kernel (what a translation may use)."""
        out = json.loads(tb.run("mmr", "ip", "-j", "addr", "show", "dev", dev))
        return [ipaddress.ip_address(a["local"]) for link in out for a in link.get("addr_info", [])
                if a.get("scope") == "global"]

    def _isp_traffic(self, tb) -> dict:
        n = self.packets
        seconds = n * 0.004 + 8
        # MN's first packets to CN, one per family: mmr resolves MN's MAC on the LAN as the
        # kernel would (the reply that asked is dropped, not queued), before the counted flows
        for dst in (CN_ADDR, ISP_CN_ADDR4):
            subprocess.run(["ip", "netns", "exec", tb.ns("mn"), sys.executable, "-m", "engine.peers",
                            "reach", dst, "1"], capture_output=True, timeout=30, cwd=ENGINE_HOME)
        sink = self._peer(tb, "cn", "udp-count", VIDEO_PORT, seconds, wait=False)
        servers = {fam: self._peer(tb, "cn", "echo-server", ECHO_PORT, seconds, addr, wait=False)
                   for fam, addr in ((6, CN_ADDR), (4, ISP_CN4))}
        self.say(f"MN -> CN: {n} video datagrams of 1200 bytes per family: IPv6 tagged (service video, "
                 f"preference QoS), IPv4 marked AF41 (IPv4 has no option; the policy's [[rule]])")
        self.say("MN <-> CN: 20 untagged UDP echo requests (port 7) per family")
        mn = ["ip", "netns", "exec", tb.ns("mn"), sys.executable, "-m", "engine.peers"]
        senders = [subprocess.Popen(mn + list(map(str, ("udp-send", dst, VIDEO_PORT, n, *tag, 1200, 0.003, dscp))),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ENGINE_HOME)
                   for dst, tag, dscp in ((CN_ADDR, (C.SERVICE_VIDEO, 2), -1), (ISP_CN4, (-1, -1), VIDEO_DSCP))]
        clients = {fam: subprocess.Popen(mn + ["echo-client", dst, str(ECHO_PORT), "20"], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, cwd=ENGINE_HOME)
                   for fam, dst in ((6, CN_ADDR), (4, ISP_CN4))}
        echo = {}
        for fam, c in clients.items():
            out, err = c.communicate(timeout=120)
            if c.returncode != 0:
                raise RuntimeError(f"IPv{fam} echo client failed: {err.strip()}")
            echo[fam] = json.loads(out)
        for s in senders:
            _, err = s.communicate(timeout=seconds + 30)
            if s.returncode != 0:
                raise RuntimeError("video sender failed: " + err.strip())
        time.sleep(0.3)                  # the last datagrams are in flight
        sink.terminate()
        video = json.loads(sink.communicate(timeout=10)[0].strip().splitlines()[-1])
        seen = {}
        for fam, srv in servers.items():
            srv.terminate()
            seen[fam] = json.loads(srv.communicate(timeout=10)[0].strip().splitlines()[-1])["sources"]
        by_family = {4: {}, 6: {}}       # video sources at CN, IPv4 as the mapped addresses they arrive as
        for src, k in video["sources"].items():
            a = ipaddress.ip_address(src)
            v4 = a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) else None
            by_family[4 if v4 else 6][str(v4 or a)] = k
        seen = {fam: {str(ipaddress.ip_address(s).ipv4_mapped or s) if fam == 4 else s: k
                      for s, k in srcs.items()} for fam, srcs in seen.items()}
        return {"video": by_family, "echo": echo, "echo_sources": seen}

    def _expected_source(self, u, family: int, own: list):
        """What CN should see from MN through uplink u: its IPv4 address when IPv4 is
        translated (MN's is private), an address in npt_prefix when IPv6 is, else MN's own."""
        if family == 4:
            if u.nat in ("auto", "masquerade"):
                return [a for a in own if a.version == 4], f"{u.name}'s address (NAPT44 of MN's {ISP_MN_ADDR4})"
            return [ipaddress.ip_address(ISP_MN_ADDR4)], "MN's own (untranslated)"
        if u.nat6 == "npt" and u.npt_prefix is not None:
            return u.npt_prefix, f"in {u.name}'s {u.npt_prefix} (NPTv6 of MN's {ISP_MN_ADDR})"
        return [ipaddress.ip_address(ISP_MN_ADDR)], "MN's own (untranslated)"

    def _isp_report(self, cfg, want, own, counts, got, summary) -> int:
        n = self.packets
        self.say("")
        self.say("carried by (nftables counters read on each ISP):")
        self.say(f"  {'flow':<30}{'ISP1':>8}{'ISP2':>8}   expected   result")
        ok = True
        for key, label, *_ in ISP_FLOWS:
            a1, a2 = counts["isp1"].get(key, 0), counts["isp2"].get(key, 0)
            node = ISP_DEVICE_NODE[want[key].device]
            good = (a1 > 0 and a2 == 0) if node == "isp1" else (a2 > 0 and a1 == 0)
            ok &= good
            self.say(f"  {label:<30}{a1:>8}{a2:>8}   {node.upper():<9}  {'as expected' if good else 'NOT as expected'}")
        for fam in (6, 4):
            r1, r2 = counts["isp1"].get(f"echo{fam}-reply", 0), counts["isp2"].get(f"echo{fam}-reply", 0)
            self.say(f"  {f'IPv{fam} echo replies (CN -> MN)':<30}{r1:>8}{r2:>8}   (CN routes each ISP's space to it)")
        self.say("")
        self.say("at CN (its sockets), and the source address each flow arrived from:")
        for key, label, fam, *_ in ISP_FLOWS:
            u = want[key]
            if key.startswith("video"):
                sources = got["video"][fam]
                count = f"{sum(sources.values())}/{n} received"
                delivered = sum(sources.values()) >= 0.95 * n
            else:
                e = got["echo"][fam]
                sources = got["echo_sources"][fam]
                count = f"{e['answered']}/{e['sent']} answered, median RTT {e['rtt_ms']} ms"
                delivered = e["answered"] >= 0.9 * e["sent"]
            allowed, what = self._expected_source(u, fam, own[u.name])
            right = bool(sources) and all(ipaddress.ip_address(s) in allowed for s in sources)
            ok &= delivered and right
            self.say(f"  {label.replace(' requests', ''):<26}{count}")
            if sources:
                self.say(f"  {'':<26}from {', '.join(sources)}: {'expected, ' if right else 'NOT '}{what}")
            else:
                self.say(f"  {'':<26}from -: nothing arrived (expected {what})")
            if not delivered:
                self.say(f"  {'':<26}delivery below {'95 % (video)' if key.startswith('video') else '90 % (echo)'}")
        self.say(f"engine: {summary}")
        self.say("")
        draft = ok and [ISP_DEVICE_NODE[want[k].device] for k, *_ in ISP_FLOWS] == ["isp1", "isp1", "isp2", "isp2"]
        self.say("result: " + ("video via ISP1 and echo via ISP2, IPv4 and IPv6, each from its ISP's address, "
                               "as in draft section 6.2" if draft
                               else "as the policy predicts" if ok else "NOT as the policy predicts"))
        return 0 if ok else 1
