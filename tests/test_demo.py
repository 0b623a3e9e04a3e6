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
