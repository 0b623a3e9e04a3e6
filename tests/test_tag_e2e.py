"""End to end, as in draft section 6: an unmodified sender on MN is tagged by ``mmr tag`` (no
change to the program, no root for it), ``mmr run`` on the MMR reads the option and picks
the uplink it asks for, and a capture at CN shows the option arrived unchanged, or removed
where the policy says ``strip_option = true`` for that uplink."""
import os
import sys

import pytest

from engine.config import default_config_path
from netlab import make_testbed, running_router
from test_tag import TAG_TOML, capture, captured, start_tag, udp_as

pytestmark = pytest.mark.privileged

AR_OF_CN_DEV = {"eth1": "ar1", "eth2": "ar2"}


@pytest.fixture(scope="module")
def bed():
    with make_testbed("te") as tb:
        yield tb


def exchange(bed, tmp_path, port, router_args=()):
    cfg = tmp_path / "tag.toml"
    cfg.write_text(TAG_TOML)
    os.chmod(tmp_path, 0o755)
    with running_router(bed, *router_args):
        tagger, _ = start_tag(bed, str(cfg))
        try:
            cap = capture(bed, [port], 5)
            got = udp_as(bed, tmp_path, port, 30)           # as nobody: tagged video, QoS
            seen = captured(cap)
        finally:
            tagger.terminate()
            tagger.wait(timeout=10)
    assert len(got) >= 29, got
    return {AR_OF_CN_DEV[g["dev"]] for g in got}, seen


def test_tagged_by_mmr_tag_routed_by_the_option_and_unchanged_at_cn(bed, tmp_path):
    ars, seen = exchange(bed, tmp_path, 9301)
    assert ars == {"ar1"}                                   # video asking for QoS: AR1 has it
    assert seen.get("9301/1/3/2", 0) >= 29 and not any(k.startswith("9301/0") for k in seen), seen


def test_strip_option_removes_it_on_the_way_out(bed, tmp_path):
    text = open(default_config_path()).read()
    assert text.count('name = "ar1"') == 1
    policy = tmp_path / "strip.toml"
    policy.write_text(text.replace('name = "ar1"', 'name = "ar1"\nstrip_option = true'))
    ars, seen = exchange(bed, tmp_path, 9302, ("--config", str(policy)))
    assert ars == {"ar1"}                                   # chosen by the option, then removed
    assert seen.get("9302/0/0/0", 0) >= 29 and not any(k.startswith("9302/1") for k in seen), seen


def test_host_mode_sends_what_mmr_tag_tagged_with_the_same_policy_file(tmp_path):
    """On a host running ``mmr host``, ``mmr tag`` with the same policy file tags what an
    unmodified program sends through vi0 (the kernel's output hook comes before the virtual
    interface): the option reaches the peer, and it picks the interface it asks for."""
    from engine.testbed import HOST, PEER_ADDR
    from netlab import ROOT, in_ns, running_mmr, start_peer
    from privdrop import as_user
    from test_tag import CAPTURE
    import json
    import subprocess

    text = open(os.path.join(os.path.dirname(default_config_path()), "default-host.toml")).read() + "\n" + TAG_TOML
    policy = tmp_path / "host.toml"
    policy.write_text(text)
    os.chmod(tmp_path, 0o755)
    with make_testbed("th", HOST) as tb, running_mmr(tb, "host", "host", "vi0 up", "--config", str(policy)):
        tagger = subprocess.Popen(in_ns(tb, "host", sys.executable, "-m", "engine", "tag", "--config", str(policy),
                                        "--stats-interval", "0"), cwd=ROOT, stderr=subprocess.PIPE, text=True)
        try:
            lines = [tagger.stderr.readline()]
            while lines[-1] and "tagging:" not in lines[-1]:
                lines.append(tagger.stderr.readline())
            assert "tagging:" in lines[-1], lines
            cap = subprocess.Popen(in_ns(tb, "peer", sys.executable, "-c", CAPTURE, "9401", 5, ROOT),
                                   stdout=subprocess.PIPE, text=True, cwd=ROOT)
            assert cap.stdout.readline().strip() == "ready"
            sink = start_peer(tb, "peer", "udp-sink", 9401, 3)
            snd = subprocess.run(as_user(tb.ns("host"), [sys.executable, "-m", "engine.peers", "udp-send",
                                                         PEER_ADDR, "9401", "30", "-1", "-1"], (), str(tmp_path)),
                                 capture_output=True, text=True, cwd=ROOT, timeout=60)
            assert snd.returncode == 0, snd.stderr
            got = [json.loads(x) for x in sink.communicate(timeout=10)[0].splitlines() if x.startswith("{")]
            seen = json.loads(cap.communicate(timeout=30)[0].strip().splitlines()[-1])
        finally:
            tagger.terminate()
            tagger.wait(timeout=10)
    assert len(got) >= 29
    assert {g["dev"] for g in got} == {"eth1"}              # video asking for QoS: i1 (R1) has it
    assert seen.get("9401/1/3/2", 0) >= 29 and not any(k.startswith("9401/0") for k in seen), seen
