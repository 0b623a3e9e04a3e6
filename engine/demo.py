"""``mmr demo``: the draft's section 6 experiment, end to end, on this machine.

    build the testbed  ->  count on AR1 and AR2 (nftables)  ->  mmr run on the MMR
    ->  tagged video MN -> CN  +  untagged UDP echo MN <-> CN  ->  read the counters
    ->  stop mmr (its summary line)  ->  tear the testbed down

Every number printed is read from the kernel (nftables counters on the ARs, sockets on CN)
or from the engine; the expectation comes from the policy's own choice table.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from engine import constants as C
from engine.errors import UserError
from engine.testbed import CN_ADDR, Testbed

# 'python -m engine ...' in a child looks in its working directory first: run the children
# where the engine this process imported lives, so a source checkout next to an installed
# mmr (the README's 'pip install . && mmr demo' in the clone) cannot shadow it.
ENGINE_HOME = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
        tb.up()
        router = None
        try:
            for ar in AR_NODES:
                subprocess.run(["ip", "netns", "exec", tb.ns(ar), "nft", "-f", "-"],
                               input=_counters_table(VIDEO_PORT, ECHO_PORT), text=True, check=True,
                               capture_output=True)
            router = self._start_router(tb)
            self.say(f"mmr run started on {self.prefix}mmr\n")
            video_rx, echo = self._traffic(tb)
            counts = {ar: read_counters(tb, ar) for ar in AR_NODES}
            summary = self._stop_router(router)
            router = None
            return self._report(names, ar_of, exp_video, exp_echo, counts, video_rx, echo, summary)
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
        if self.cfg_path:
            cmd += ["--config", os.path.abspath(self.cfg_path)]
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
