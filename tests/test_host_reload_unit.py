"""mmr reload under mmr host, the parts that run without a testbed: host mode's translation
in uplink slots (an interface added into a free slot translates every IPv4 source from vi0,
an emptied slot's NAPT44 and NAPT66 mappings go at once), what an added interface may not
need that mmr host did not start with, and the sentences that refuse an interface (vi0's
MTU, a missing device, vi0's own address, nat6 = "npt").  tests/test_host_reload.py runs
it live."""
import ipaddress
import types

from engine import _forward, _nat
from engine._pipeline import Pipeline
from engine.config import load_config
from engine.host import VirtualInterface
from engine.slots import slotted
from engine.translate import Translation
from test_nat66 import udp6
from test_uplink_churn_unit import Log, State as AddressState

A1 = ipaddress.ip_address("198.18.21.2")
A2 = ipaddress.ip_address("198.18.22.2")
A2_6 = ipaddress.ip_address("2001:db8:b2::2")
REMOTE6 = "2001:db8:ee::1"


class State(AddressState):
    """What Translation and VirtualInterface read of engine.netlink.State: the addresses per
    device index (as for mmr run) and, for host mode, the links by name."""

    def __init__(self, links=None):
        super().__init__()
        self.links = links or {}

    def address6(self, index):
        return next((a for a in self.addrs.get(index, []) if a.version == 6), None)

    def link(self, dev):
        return self.links.get(dev)


def host_cfg(tmp_path, uplinks, addresses=('"198.18.99.10/32"', '"2001:db8:99::10/128"')):
    p = tmp_path / "h.toml"
    p.write_text(f'[host]\nvi = "vi0"\naddresses = [{", ".join(addresses)}]\n'
                 + "".join(f'[[uplink]]\nname = "{n}"\ndevice = "{n}"\n{extra}\n' for n, extra in uplinks))
    return load_config(str(p), default="default-host.toml")


def host_translation(cfg):
    fw = _forward.Forwarder(Pipeline(cfg, batch=16), False, len(cfg.uplinks), 16)
    t = Translation(cfg, fw, False, Log())
    assert t.nat is None or (type(t.nat) is _nat.Nat44 and _nat.__file__.endswith(".so"))
    return t


def test_an_interface_added_into_a_free_slot_translates_and_a_removed_one_s_mappings_go(tmp_path):
    start = slotted(host_cfg(tmp_path, [("i1", ""), ("i2", 'nat6 = "masquerade"')]), 4)
    t = host_translation(start)
    assert t.modes == [2, 2, 0, 0]                  # host mode: every IPv4 source; empty slots none
    st = State()
    st.addrs = {7: [A1], 8: [A2, A2_6]}
    t.refresh(st, [7, 8, None, None], [])
    assert t.nat.address(1) == A2.packed and t.nat6.address(1) == A2_6.packed
    # a NAPT66 mapping on slot 1, then a reload removes i2: its mappings go at once
    lan6, rem6 = ipaddress.ip_address("2001:db8:99::10").packed, ipaddress.ip_address(REMOTE6).packed
    assert t.nat6.out_packet(bytearray(udp6(lan6, rem6, 5000, 53)), 1, 1.0) == "ok"
    args = (17, lan6, 5000, rem6, 53, 1)
    assert t.nat6.mapping(*args) is not None
    new = slotted(host_cfg(tmp_path, [("i1", "")]), 4, ["i1", "i2", "", ""])
    assert t.reslot(1, new) == 1
    assert t.nat6.mapping(*args) is None and t.nat6.address(1) is None and t.nat.address(1) is None
    assert t.modes == [2, 0, 0, 0]
    t.refresh(st, [7, None, None, None], [])
    assert "i2" not in t.status()["uplinks"]
    # i3 added into the free slot 2 (i1 keeps slot 0): it translates once it has an address
    new = slotted(host_cfg(tmp_path, [("i1", ""), ("i3", "")]), 4, ["i1", "", "", ""])
    assert [u.name for u in new.uplinks] == ["i1", "i3", "", ""]
    assert t.missing(new.uplinks[1]) is None
    t.reslot(1, new)
    st.addrs[9] = [ipaddress.ip_address("198.18.23.2")]
    assert t.refresh(st, [7, 9, None, None], [])
    assert t.modes[1] == 2 and t.status()["uplinks"]["i3"]["address"] == "198.18.23.2"


def test_what_an_added_interface_needs_that_mmr_host_did_not_start_with(tmp_path):
    # vi0 with IPv6 only: nothing to translate in IPv4, so no translator, and none needed
    cfg = slotted(host_cfg(tmp_path, [("i1", "")], addresses=('"2001:db8:99::10/128"',)), 4)
    t = host_translation(cfg)
    assert t.nat is None and t.nat6 is None
    added = host_cfg(tmp_path, [("i2", "")], addresses=('"2001:db8:99::10/128"',)).uplinks[0]
    assert t.missing(added) is None
    added = host_cfg(tmp_path, [("i2", 'nat6 = "masquerade"')]).uplinks[0]
    assert t.missing(added) == ('uplink i2 has nat6 = "masquerade" but mmr started without a NAPT66 uplink; '
                                'restart mmr to add it, or write nat6 = "none"')
    # vi0 with IPv4 and every interface nat = "none": an added translating one needs a restart
    cfg = slotted(host_cfg(tmp_path, [("i1", 'nat = "none"')]), 4)
    t = host_translation(cfg)
    assert t.nat is None
    added = host_cfg(tmp_path, [("i2", "")]).uplinks[0]
    assert t.missing(added) == ('uplink i2 translates IPv4 (nat = "auto") but mmr started without a '
                                'translating uplink; restart mmr to add it, or write nat = "none"')


def test_an_added_interface_is_refused_in_one_sentence(tmp_path):
    cfg = host_cfg(tmp_path, [("i1", "")])
    vi = VirtualInterface(cfg)
    vi.mtu = 1500                                    # as open() sized it
    link = types.SimpleNamespace
    dp = types.SimpleNamespace(state=State({"i2": link(mtu=1400, index=8), "i3": link(mtu=9000, index=9)}))
    new = host_cfg(tmp_path, [("i1", ""), ("i2", "")])
    assert vi.refuse_added(dp, new, [new.uplinks[1]]) == (
        "interface i2's device i2 has MTU 1400, below vi0's 1500; raise i2's MTU to 1500, or set "
        "host.mtu = 1400 and restart mmr host")
    new = host_cfg(tmp_path, [("i1", ""), ("i4", "")])
    assert vi.refuse_added(dp, new, [new.uplinks[1]]) == (
        "device 'i4' of the added interface i4 does not exist; mmr host adds an interface whose device "
        "is there ('ip link' lists them)")
    new = host_cfg(tmp_path, [("i1", ""), ("i3", 'nat6 = "npt"')])
    why = vi.refuse_added(dp, new, [new.uplinks[1]])
    assert "uplink[1].nat6" in why and '"npt" is not available in host mode' in why, why
    new = host_cfg(tmp_path, [("i1", ""), ("i3", "")])
    dp.state.addrs[9] = [ipaddress.ip_address("198.18.99.10")]
    assert vi.refuse_added(dp, new, [new.uplinks[1]]) == (
        "address 198.18.99.10 of host.addresses is on i3; the virtual interface needs addresses of its own")
    dp.state.addrs[9] = []
    assert vi.refuse_added(dp, new, [new.uplinks[1]]) is None      # a bigger MTU is fine: vi0 keeps its own
