"""Every program the code runs is installed by the line that needs it.

The programs are found in the source (not listed by hand): the first word of every argv
literal given to subprocess, ``shutil.which("X")``, and the command words of the testbed
helpers (``in_ns(tb, node, "X", ...)``, ``tb.run(node, "X", ...)``, ``ip netns exec NS X``,
``as_user(ns, ["X", ...])``), and a module's ``PROGRAMS`` tuple for what a shell script of
its own runs.  Each is mapped to its Debian package with dpkg on this machine.
What ``engine/`` runs (the main job) must be installed by the README's first command; what
anything runs (tests and benchmarks too) by ``.ci/run``.  Essential packages (coreutils, dash,
util-linux, ...) are on every Debian machine and need no line."""
import ast
import os
import re
import shutil
import subprocess

from netlab import ROOT

SUBPROCESS = {"run", "Popen", "check_output", "check_call", "call"}


def _const(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _argv_program(lst: ast.List):
    words = [_const(e) for e in lst.elts]
    if not words or words[0] is None:
        return []
    found = [words[0]]
    if words[:3] == ["ip", "netns", "exec"] and len(words) > 4 and words[4]:
        found.append(words[4])
    return found


def programs_in(path: str) -> set[str]:
    tree = ast.parse(open(path).read(), path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PROGRAMS" for t in node.targets):
            found.update(_const(e) for e in getattr(node.value, "elts", []) if _const(e))
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        args = node.args
        if name in SUBPROCESS and args and isinstance(args[0], ast.List):
            found.update(_argv_program(args[0]))
        elif name == "which" and args and _const(args[0]):
            found.add(_const(args[0]))
        elif name == "in_ns" and len(args) > 2 and _const(args[2]):
            found.add(_const(args[2]))
        elif name == "run" and isinstance(f, ast.Attribute) and not (
                isinstance(f.value, ast.Name) and f.value.id == "subprocess") \
                and len(args) > 1 and _const(args[0]) and _const(args[1]):
            found.add(_const(args[1]))              # Testbed.run(node, program, ...)
        elif name == "as_user" and len(args) > 1 and isinstance(args[1], ast.List):
            found.update(_argv_program(args[1]))
    return {p for p in found if re.fullmatch(r"[a-z][a-z0-9_.+-]*", p) and p not in ("python3", "python", "mmr")}


def programs_under(*dirs: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for d in dirs:
        for base, _, files in os.walk(os.path.join(ROOT, d)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(base, f)
                    for p in programs_in(path):
                        out.setdefault(p, set()).add(os.path.relpath(path, ROOT))
    return out


def package_of(program: str) -> str:
    path = shutil.which(program)
    assert path, f"{program} is run by the code but not installed here"
    real = os.path.realpath(path)
    for candidate in (real, real.removeprefix("/usr"), path, path.removeprefix("/usr")):
        p = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        if p.returncode == 0:
            return p.stdout.split(":")[0].split(",")[0].strip()
    raise AssertionError(f"no Debian package owns {program} ({real})")


def essential(pkg: str) -> bool:
    p = subprocess.run(["dpkg-query", "-W", "-f=${Essential}", pkg], capture_output=True, text=True)
    return p.stdout.strip() == "yes"


def readme_apt_packages() -> set[str]:
    text = open(os.path.join(ROOT, "README.md")).read()
    m = re.search(r"^apt-get update && apt-get install -y ([^&]+)&&", text, re.M)
    assert m, "the README's first command has no apt-get install line"
    return set(m.group(1).split())


def ci_apt_packages() -> set[str]:
    m = re.search(r'^apt_pkgs="([^"]+)"', open(os.path.join(ROOT, ".ci", "run")).read(), re.M)
    assert m, ".ci/run has no apt_pkgs line"
    return set(m.group(1).split())


def test_the_scan_finds_what_the_engine_runs():
    """The scan itself works: it sees the programs the router and host mode are known to run."""
    engine = programs_under("engine")
    assert {"nft", "ip"} <= set(engine)
    assert "engine/guard.py" in engine["nft"] and "engine/host.py" in engine["ip"]
    assert {"ping", "setpriv", "systemd-analyze"} <= set(programs_under("tests"))


def test_the_main_job_programs_are_installed_by_the_readme_line():
    apt = readme_apt_packages()
    missing = {p: (package_of(p), sorted(where)) for p, where in programs_under("engine").items()
               if not essential(package_of(p)) and package_of(p) not in apt}
    assert not missing, f"run by engine/ but not installed by the README's first command: {missing}"


def test_every_program_is_installed_by_ci():
    apt = ci_apt_packages()
    missing = {p: (package_of(p), sorted(where)[:3])
               for p, where in programs_under("engine", "tests", "bench").items()
               if not essential(package_of(p)) and package_of(p) not in apt}
    assert not missing, f"run by the code but not installed by .ci/run: {missing}"
