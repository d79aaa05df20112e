#!/usr/bin/env python3
"""Checks that every #include points down the library graph that CMake builds.

Every include in fjord starts at the repository root ("runtime/tenancy/audit.h"), so the compiler finds a
header of any library from any other, and CMake cannot see an include that has no link behind it.
This script can: it reads CMake's own description of the build (the file API's codemodel, which
CMakeLists.txt requests at configure time): which library owns each source and header, and which
libraries each target depends on. Then, for every file of every target, each `#include "X"` that
names a file of another library must name one the target depends on. An include of a library that
is not a dependency is a back-edge (or a missing link): it is reported as FILE:LINE with both
libraries and what to do, and the script exits 1.

The rules are therefore the CMake graph itself: to allow a new edge, add it to
target_link_libraries, where a reviewer sees it; to forbid one, do not.

Usage: check_layers.py --build BUILD_DIR [--source SOURCE_DIR]
SOURCE_DIR (default: the build's own source directory) is where the files are read, so a test can
check a modified copy of the tree against a build's graph.
"""
import argparse
import glob
import json
import os
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')


def load_codemodel(build):
    reply = os.path.join(build, ".cmake", "api", "v1", "reply")
    indexes = sorted(glob.glob(os.path.join(reply, "index-*.json")))
    if not indexes:
        sys.exit(f"check-layers: no CMake file-API reply in {reply}: configure the build first "
                 f"(cmake -S . -B {build}); CMakeLists.txt requests the codemodel")
    index = json.load(open(indexes[-1]))
    try:
        codemodel_file = index["reply"]["client-fjord"]["codemodel-v2"]["jsonFile"]
    except KeyError:
        sys.exit(f"check-layers: the reply in {reply} has no codemodel for client-fjord: reconfigure")
    codemodel = json.load(open(os.path.join(reply, codemodel_file)))
    source_dir = codemodel["paths"]["source"]
    build_dir = codemodel["paths"]["build"]
    targets = []
    for ref in codemodel["configurations"][0]["targets"]:
        t = json.load(open(os.path.join(reply, ref["jsonFile"])))
        if t["type"] == "UTILITY":
            continue
        deps = {d["id"].split("::")[0] for d in t.get("dependencies", [])}
        files = []
        for s in t.get("sources", []):
            path = s["path"]
            if os.path.isabs(path):  # generated in the build tree: proto/job.pb.h
                rel = os.path.relpath(path, build_dir)
            else:
                rel = path
                if rel.startswith(os.path.relpath(build_dir, source_dir) + os.sep):
                    rel = os.path.relpath(os.path.join(source_dir, rel), build_dir)
            files.append((path, rel.replace(os.sep, "/")))
        targets.append({"name": t["name"], "type": t["type"], "deps": deps, "files": files})
    return source_dir, targets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--source")
    args = ap.parse_args()
    cmake_source, targets = load_codemodel(args.build)
    source = args.source or cmake_source

    owners = {}  # include path ("runtime/tenancy/audit.h") -> libraries that list it
    for t in targets:
        if t["type"].endswith("LIBRARY"):
            for _, rel in t["files"]:
                owners.setdefault(rel, set()).add(t["name"])

    problems = []
    checked = 0
    for t in targets:
        allowed = t["deps"] | {t["name"]}
        for path, rel in t["files"]:
            full = os.path.join(source, path) if not os.path.isabs(path) else None
            if full is None or not os.path.isfile(full):
                continue  # generated files are checked where they are made (protoc)
            checked += 1
            with open(full, encoding="utf-8", errors="replace") as f:
                for number, line in enumerate(f, 1):
                    m = INCLUDE.match(line)
                    if not m or m.group(1) not in owners:
                        continue
                    libs = owners[m.group(1)]
                    if libs & allowed:
                        continue
                    lib = " or ".join(sorted(libs))
                    problems.append(
                        f"{path}:{number}: includes \"{m.group(1)}\" of {lib}, but {t['name']} does not depend on "
                        f"it (it may use: {', '.join(sorted(t['deps'])) or 'nothing'}). Move what it needs into a "
                        f"library below both, or, if the dependency is intended, add it to {t['name']}'s "
                        f"target_link_libraries (docs/ARCHITECTURE.md, \"Layers\")")
    for p in sorted(set(problems)):
        print(p)
    if problems:
        print(f"check-layers: {len(set(problems))} include(s) against the library graph", file=sys.stderr)
        return 1
    print(f"check-layers: ok, {checked} files of {len(targets)} targets include only what they depend on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
