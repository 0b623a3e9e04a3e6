import os
import shutil

import pytest


def pytest_collection_modifyitems(config, items):
    """Privileged tests need root and iproute2.  Without them they skip, naming the reason;
    under CI (MMR_REQUIRE_PRIVILEGED=1, set by .ci/run) a missing privilege is an error, so a
    skip can never hide a failure there."""
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (network namespaces, AF_PACKET)"
    elif shutil.which("ip") is None:
        reason = "needs iproute2 ('ip')"
    if reason is None:
        return
    if os.environ.get("MMR_REQUIRE_PRIVILEGED") == "1":
        raise pytest.UsageError(f"privileged tests cannot run: {reason}")
    for item in items:
        if "privileged" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
