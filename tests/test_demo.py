"""mmr demo, the README's main job, run as a user would run it (privileged)."""
import os
import re
import subprocess
import sys

import pytest

from engine.netns import namespaces
from netlab import ROOT

pytestmark = pytest.mark.privileged


def demo(*args):
    return subprocess.run([sys.executable, "-m", "engine", "demo", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=180)


def carried(out, label):
    m = re.search(rf"^  {re.escape(label)}\s+(\d+)\s+(\d+)", out, re.M)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def test_demo_reproduces_section_6_2():
    prefix = f"d{os.getpid() % 10000}-"
    p = demo("--prefix", prefix, "--packets", "100")
    assert p.returncode == 0, p.stdout + p.stderr
    assert carried(p.stdout, "video (tagged, QoS)") == (100, 0)
    assert carried(p.stdout, "echo requests (untagged)") == (0, 20)
    assert "at CN: 100/100 video datagrams received; echo 20/20 answered" in p.stdout
    assert "result: video via AR1 and echo via AR2, as in draft section 6.2" in p.stdout
    assert "engine: mmr: rx_inside=" in p.stdout and "up_ar1=100 up_ar2=20" in p.stdout
    assert not [n for n in namespaces() if n.startswith(prefix)]


def test_demo_follows_the_policy_not_a_script(tmp_path):
    """Swap which AR offers QoS and has the short queue: the demo's outcome swaps too."""
    from engine.config import default_config_path

    text = open(default_config_path()).read()
    text = text.replace('device = "up1"', 'device = "upX"').replace('device = "up2"', 'device = "up1"')
    text = text.replace('device = "upX"', 'device = "up2"')
    text = text.replace('gateway = "2001:db8:a1::1"', 'gateway = "GW1"').replace(
        'gateway = "2001:db8:a2::1"', 'gateway = "2001:db8:a1::1"').replace('gateway = "GW1"',
                                                                              'gateway = "2001:db8:a2::1"')
    cfg = tmp_path / "swapped.toml"
    cfg.write_text(text)
    prefix = f"e{os.getpid() % 10000}-"
    p = demo("--prefix", prefix, "--packets", "50", "--config", str(cfg))
    assert p.returncode == 0, p.stdout + p.stderr
    assert carried(p.stdout, "video (tagged, QoS)") == (0, 50)
    assert carried(p.stdout, "echo requests (untagged)") == (20, 0)
    assert "result: as the policy predicts" in p.stdout


def test_demo_with_a_foreign_policy_is_refused(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text('[engine]\nlan = "eth9"\n[[uplink]]\nname = "x"\ndevice = "up1"\n')
    p = demo("--config", str(cfg))
    assert p.returncode == 2 and "lan0" in p.stderr and p.stderr.count("\n") == 1


def test_demo_children_use_the_engine_the_demo_imported(tmp_path):
    """The README's 'pip install . && mmr demo' runs in the clone, whose uncompiled engine/
    sits in the working directory: the demo's children must not import that one.  A decoy
    package in the working directory stands in for it here."""
    decoy = tmp_path / "engine"
    decoy.mkdir()
    (decoy / "__init__.py").write_text('raise ImportError("decoy engine imported")\n')
    (decoy / "__main__.py").write_text("")
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); from engine.cli import main; "
            f"sys.exit(main(['demo', '--prefix', 'y{os.getpid() % 10000}-', '--packets', '20']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "decoy" not in p.stdout + p.stderr
    assert carried(p.stdout, "video (tagged, QoS)") == (20, 0)


def isp_policy(tmp_path, *swaps):
    from engine.demo import ISP_POLICY

    text = open(ISP_POLICY).read()
    for a, b in swaps:
        text = text.replace(a, "@@").replace(b, a).replace("@@", b)
    p = tmp_path / "isp.toml"
    p.write_text(text)
    return str(p)


def arrived(out, label):
    """(count line, source line) of a flow at CN."""
    m = re.search(rf"^  {re.escape(label)}\s+(.*)\n\s+from (.*)$", out, re.M)
    assert m, out
    return m.group(1), m.group(2)


def test_demo_isp_shows_the_draft_outcome_in_both_families_through_the_translations():
    """Across the ISP testbed (private LAN, BCP 38, ISP2 an L3 link, learned gateways): video
    via ISP1 and echo via ISP2 in IPv4 and IPv6, every datagram at CN, each from the address
    of the ISP that carried it (NAPT44: up1's / up2's address; NPTv6: inside its prefix)."""
    prefix = f"i{os.getpid() % 10000}-"
    p = demo("--topology", "isp", "--prefix", prefix, "--packets", "100")
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert carried(out, "IPv6 video (tagged, QoS)") == (100, 0)
    assert carried(out, "IPv4 video (AF41)") == (100, 0)
    assert carried(out, "IPv6 echo requests") == (0, 20)
    assert carried(out, "IPv4 echo requests") == (0, 20)
    count, src = arrived(out, "IPv6 video (tagged, QoS)")
    assert count == "100/100 received" and re.match(r"2001:db8:a1:100:[0-9a-f]+::10: expected", src), src
    count, src = arrived(out, "IPv4 video (AF41)")
    assert count == "100/100 received" and src.startswith("198.18.1.2: expected"), src
    count, src = arrived(out, "IPv6 echo")
    assert count.startswith("20/20 answered") and re.match(r"2001:db8:a2:100:[0-9a-f]+::10: expected", src), src
    count, src = arrived(out, "IPv4 echo")
    assert count.startswith("20/20 answered") and src.startswith("198.18.2.2: expected"), src
    assert "up_isp1=200 " in out and "drops=0" in out
    assert "result: video via ISP1 and echo via ISP2, IPv4 and IPv6, each from its ISP's address" in out
    assert not [n for n in namespaces() if n.startswith(prefix)]


def test_demo_isp_follows_the_policy(tmp_path):
    """ISP2 offers QoS and ISP1 the short queue: every flow takes the other ISP, and leaves
    with that ISP's address."""
    cfg = isp_policy(tmp_path, ("qos = 1.0", "qos = 0.0"), ("queueing_delay_ms = 30.0", "queueing_delay_ms = 10.0"))
    p = demo("--topology", "isp", "--prefix", f"j{os.getpid() % 10000}-", "--packets", "50", "--config", cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    assert carried(p.stdout, "IPv4 video (AF41)") == (0, 50)
    assert carried(p.stdout, "IPv6 echo requests") == (20, 0)
    assert arrived(p.stdout, "IPv4 echo")[1].startswith("198.18.1.2: expected")
    assert re.match(r"2001:db8:a2:100:[0-9a-f]+::10: expected", arrived(p.stdout, "IPv6 video (tagged, QoS)")[1])
    assert "result: as the policy predicts" in p.stdout


def test_demo_isp_fails_where_the_world_would(tmp_path):
    """Without NPTv6 the ULA source leaves untranslated: the ISPs carry the IPv6 flows to
    their BCP 38 rule (counted) and drop them; CN sees nothing, and the demo says so."""
    cfg = isp_policy(tmp_path, ('nat6 = "npt"', 'nat6 = "none"'))
    p = demo("--topology", "isp", "--prefix", f"k{os.getpid() % 10000}-", "--packets", "20", "--config", cfg)
    assert p.returncode == 1, p.stdout + p.stderr
    assert carried(p.stdout, "IPv6 video (tagged, QoS)") == (20, 0)
    assert arrived(p.stdout, "IPv6 video (tagged, QoS)") == ("0/20 received",
                                                             "-: nothing arrived (expected MN's own (untranslated))")
    assert arrived(p.stdout, "IPv4 video (AF41)")[0] == "20/20 received"
    assert "result: NOT as the policy predicts" in p.stdout


def test_demo_isp_with_a_foreign_policy_is_refused(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text('[engine]\nlan = "lan0"\n[[uplink]]\nname = "x"\ndevice = "eth0"\n')
    p = demo("--topology", "isp", "--config", str(cfg))
    assert p.returncode == 2 and "up2 (ISP2" in p.stderr and p.stderr.count("\n") == 1


def test_demo_help_names_both_topologies():
    p = demo("--help")
    assert p.returncode == 0 and "--topology {draft,isp}" in p.stdout and "BCP 38" in p.stdout
