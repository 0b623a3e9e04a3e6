import sys

from ratio import RESULTS  # noqa: E402  (bench/ is on sys.path via rootdir conftest)


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    terminalreporter.section("mmr ratios (baseline time / mmr time, same run)")
    for r in RESULTS:
        terminalreporter.write_line(r.line())
