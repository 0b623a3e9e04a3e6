"""The C row layout (pyx/rows.pxd) and the numpy dtype (engine.constants) agree."""
import engine._contract as contract
from engine import constants as C


def test_compiled_contract_is_an_extension():
    assert contract.__file__.endswith(".so")


def test_row_layout_matches_dtype():
    layout, size = contract.row_layout()
    assert size == C.ROW_DTYPE.itemsize == 64
    for name, (off, sz) in layout.items():
        dt, dt_off = C.ROW_DTYPE.fields[name][:2]
        assert (off, sz) == (dt_off, dt.itemsize), name


def test_reason_codes_match():
    codes, n = contract.reason_codes()
    assert n == C.N_REASONS
    assert codes == {name: code for code, name, _ in C.REASONS}
    for code, name, _ in C.REASONS:
        assert getattr(C, "REASON_" + name.upper()) == code


def test_counter_table_matches_the_compiled_enum():
    from engine import counters as CT

    codes, size = contract.event_codes()
    assert size == CT.SIZE
    for name, code in codes.items():
        assert CT.INDEX[name] == code, name
    assert set(codes) == {name for name, _ in CT.EVENTS}
    assert CT.NAMES[:C.N_REASONS] == C.REASON_NAMES


def test_struct_mirrors_match():
    from engine import _forward

    sizes = contract.struct_sizes()
    assert sizes["virtio_net_hdr"] == C.VNET_DTYPE.itemsize == 10
    dt = _forward.PUNT_DTYPE
    assert sizes["punt_rec"] == dt.itemsize
    for field in ("data", "addr", "mtu"):
        assert sizes[f"punt_rec.{field}"] == dt.fields[field][1], field
