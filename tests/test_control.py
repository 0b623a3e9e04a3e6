"""The control protocol's validation: every request is a JSON object with a known command
and typed arguments; anything else is an error answer (tests/test_router_lifecycle.py sends
them to a running router)."""
import pytest

from engine.control import validate

BAD = [b"[]", b'"status"', b"1", b"null", b'{"cmd": "flows", "limit": 1e999}', b"[" * 60000,
       b'{"cmd": "flows", "limit": -1}', b'{"cmd": "flows", "limit": true}', b'{"cmd": "nope"}',
       b'{"cmd": ["status"]}', b'{"cmd": "status", "extra": 1}', b'{"cmd": "flows", "uplink": 5}',
       b"\xff\xfe", b"", b'{"cmd": "flows", "limit": 99999999999}']


@pytest.mark.parametrize("raw", BAD, ids=[repr(b[:20]) for b in BAD])
def test_bad_requests_are_refused_with_a_sentence(raw):
    with pytest.raises(ValueError) as e:
        validate(raw)
    assert str(e.value) and "\n" not in str(e.value)


def test_good_requests_pass():
    assert validate(b'{"cmd": "status"}') == {"cmd": "status"}
    assert validate(b'{"cmd": "flows", "limit": 5, "uplink": "ar1"}')["limit"] == 5
    assert validate(b'{"cmd": "flows", "uplink": null}')["uplink"] is None
