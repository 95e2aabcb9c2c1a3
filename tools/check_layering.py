#!/usr/bin/python3
"""Checks the layering rules of ARCHITECTURE.md ("Layering") on the #include lines of the tree.

  * ipc/ (contracts, runtime, configuration, crypto) includes nothing of supervisor/ or workers/;
  * supervisor/ includes nothing of workers/, and workers/ nothing of supervisor/;
  * a role (workers/<role>/) includes only itself, workers/common/, ipc/ and proto/: roles meet
    only through ipc/; workers/common/ includes no role.

Prints one line per violation (file:line: the include and the rule) and exits 1 if there is any.
`--self-test` plants one violation of each rule in a scratch tree and checks that each is found.
"""
import os
import re
import sys
import tempfile

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
SOURCES = (".h", ".cc", ".hpp", ".cpp", ".capnp")


def rule_for(path, target):
    """The rule that `path` including `target` breaks, or None."""
    top = path.split("/", 1)[0]
    ttop = target.split("/", 1)[0]
    if top == "ipc" and ttop in ("supervisor", "workers"):
        return "ipc/ is below every role: it includes nothing of supervisor/ or workers/"
    if top == "supervisor" and ttop == "workers":
        return "supervisor/ never includes workers/ (they meet through ipc/)"
    if top == "workers" and ttop == "supervisor":
        return "workers/ never includes supervisor/ (they meet through ipc/)"
    if top == "workers" and ttop == "workers":
        role = path.split("/")[1]
        trole = target.split("/")[1]
        if role == "common" and trole != "common":
            return "workers/common/ includes no role"
        if role != "common" and trole not in (role, "common"):
            return f"role {role} includes role {trole}: roles meet only through ipc/"
    return None


def check(root):
    problems = []
    for top in ("ipc", "supervisor", "workers"):
        for dirpath, _, names in os.walk(os.path.join(root, top)):
            for name in sorted(names):
                if not name.endswith(SOURCES):
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root)
                with open(full, encoding="utf-8", errors="replace") as f:
                    for n, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        why = rule_for(rel, m.group(1))
                        if why:
                            problems.append(f"{rel}:{n}: #include \"{m.group(1)}\": {why}")
    return problems


def self_test():
    planted = {
        "ipc/config/a.h": "workers/common/role.h",
        "supervisor/b.cc": "workers/common/role.h",
        "workers/auth/c.cc": "supervisor/supervisor.h",
        "workers/listener/d.cc": "workers/auth/identity.h",
        "workers/common/e.h": "workers/listener/front_door.h",
    }
    allowed = {
        "workers/listener/ok.cc": "workers/common/jwt.h",
        "workers/transport/ok.cc": "ipc/config/config.h",
        "supervisor/ok.cc": "ipc/runtime/worker_entry.h",
    }
    with tempfile.TemporaryDirectory() as root:
        for path, target in {**planted, **allowed}.items():
            os.makedirs(os.path.join(root, os.path.dirname(path)), exist_ok=True)
            with open(os.path.join(root, path), "w") as f:
                f.write(f'#include <string>\n#include "{target}"\n')
        found = check(root)
    hit = {p.split(":", 1)[0] for p in found}
    missed = set(planted) - hit
    wrong = hit - set(planted)
    if missed or wrong:
        print(f"self-test failed: missed {sorted(missed)}, flagged allowed {sorted(wrong)}")
        return 1
    print(f"self-test: {len(planted)} planted violations found, {len(allowed)} allowed includes passed")
    return 0


def main():
    if "--self-test" in sys.argv:
        return self_test()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    problems = check(root)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} layering violation(s)")
        return 1
    print("layering: ipc/, supervisor/ and workers/ keep their rules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
