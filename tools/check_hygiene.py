#!/usr/bin/python3
"""Tree hygiene, checked so that it stays true:

  * no tracked file cites a path outside the repository (the team's notes live outside it, and a
    reader of the repository cannot follow such a path);
  * every tracked C++ file is as .clang-format wants it, includes sorted within their blocks
    (`clang-format --dry-run --Werror`).

Prints one line per problem and exits 1 if there is any. `--self-test` checks that a planted
citation and a planted unsorted include are both found.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTSIDE = re.compile(r"(/work/|\.\./shared/|\bshared/(spec|design|hooks)/|\.library/)")
TEXT_SUFFIXES = (".md", ".cc", ".h", ".py", ".sh", ".js", ".json", ".txt", ".capnp", ".proto",
                 ".yaml", ".yml", ".cmake", "Dockerfile", ".conf", ".in")
CXX_SUFFIXES = (".cc", ".h")
SELF = "tools/check_hygiene.py"


def tracked(root):
    out = subprocess.run(["git", "-C", root, "ls-files", "-z"], capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


def citations(root, files):
    problems = []
    for rel in files:
        if rel == SELF or not (rel.endswith(TEXT_SUFFIXES) or os.path.basename(rel) == "run"):
            continue
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                m = OUTSIDE.search(line)
                if m:
                    problems.append(f"{rel}:{n}: cites a path outside the repository ({m.group(0)})")
    return problems


def formatting(root, files):
    exe = shutil.which("clang-format")
    if not exe:
        return ["clang-format not found (tools/install-deps.sh installs it)"]
    cxx = [f for f in files if f.endswith(CXX_SUFFIXES) and os.path.isfile(os.path.join(root, f))]
    r = subprocess.run([exe, "--dry-run", "--Werror", *cxx], cwd=root, capture_output=True,
                       text=True)
    if r.returncode == 0:
        return []
    bad = sorted({line.split(":", 1)[0] for line in r.stderr.splitlines()
                  if ": error:" in line})
    return [f"{p}: not formatted as .clang-format says (run: clang-format -i {p})" for p in bad] or \
        [r.stderr.strip()[:2000]]


def check(root):
    files = tracked(root)
    return citations(root, files) + formatting(root, files)


def self_test():
    with tempfile.TemporaryDirectory() as root:
        subprocess.run(["git", "init", "-q", root], check=True)
        shutil.copy(os.path.join(ROOT, ".clang-format"), root)
        with open(os.path.join(root, "a.md"), "w") as f:
            f.write("see /work/shared/design/guide.md\n")
        with open(os.path.join(root, "b.cc"), "w") as f:
            f.write('#include "z.h"\n#include "a.h"\n\nint x = 0;\n')
        with open(os.path.join(root, "c.cc"), "w") as f:
            f.write('#include "a.h"\n#include "z.h"\n\nint y = 0;\n')
        subprocess.run(["git", "-C", root, "add", "."], check=True)
        found = check(root)
    hit = {p.split(":", 1)[0] for p in found}
    if hit != {"a.md", "b.cc"}:
        print(f"self-test failed: flagged {sorted(hit)}, expected a.md and b.cc: {found}")
        return 1
    print("self-test: the planted citation and unsorted include were found, the clean file passed")
    return 0


def main():
    if "--self-test" in sys.argv:
        return self_test()
    problems = check(ROOT)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} hygiene problem(s)")
        return 1
    print("hygiene: no citation outside the repository; C++ formatted and includes sorted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
