#!/usr/bin/env python3
"""Where one server spends more CPU per request than another, from two flat perf
profiles (`perf report --no-children --sort dso,symbol -g none`, as bench.sh's
perf_stop writes them) and each run's server CPU µs per request.

    profile-diff.py A.flat.txt A_US B.flat.txt B_US [top]

Each sample share is turned into µs per request (share × that run's CPU per request),
then summed by where the code comes from: the kernel, libc, the allocator (mimalloc),
or the first Rust crate the symbol names (`<axum::… as tower_service::Service>::call`
and `<F as axum::handler::Handler>::call` count for axum, `drop_in_place<http::…>` for http). Prints the sums for A, B and A − B, largest difference first, then
the `top` symbols (default 25) that differ most.
"""

import re
import sys
from collections import defaultdict

LINE = re.compile(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s*$")


def origin(dso, kind, sym):
    if kind == "k":
        return "kernel"
    if re.match(r"_?_?mi_|mi_", sym):
        return "mimalloc"
    if dso != "stock-node" and not dso.startswith("stock"):
        return dso.split(".so")[0]
    # The first crate path named (`<F as axum::…>` is axum's); a value dropped counts
    # for the crate of its type.
    sym = sym.removeprefix("core::ptr::drop_in_place<")
    m = re.search(r"([a-z_][a-z0-9_]*)::", sym)
    return m.group(1) if m else "other"


def load(path, us):
    by_origin, by_symbol = defaultdict(float), defaultdict(float)
    for line in open(path):
        m = LINE.match(line)
        if not m:
            continue
        share, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        cost = share * us / 100
        by_origin[origin(dso, kind, sym)] += cost
        by_symbol[sym[:100]] += cost
    return by_origin, by_symbol


def main():
    a_path, a_us, b_path, b_us = sys.argv[1], float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    top = int(sys.argv[5]) if len(sys.argv) > 5 else 25
    a_o, a_s = load(a_path, a_us)
    b_o, b_s = load(b_path, b_us)
    print(f"CPU µs per request: A {a_us:.1f}, B {b_us:.1f}, A - B {a_us - b_us:.1f}")
    print(f"{'from':<22} {'A':>7} {'B':>7} {'A - B':>7}")
    for k in sorted(set(a_o) | set(b_o), key=lambda k: -(a_o[k] - b_o[k])):
        print(f"{k:<22} {a_o[k]:7.2f} {b_o[k]:7.2f} {a_o[k] - b_o[k]:7.2f}")
    print(f"\nthe {top} symbols that differ most (µs per request)")
    diff = sorted(set(a_s) | set(b_s), key=lambda k: -abs(a_s[k] - b_s[k]))
    for k in diff[:top]:
        print(f"{a_s[k]:7.2f} {b_s[k]:7.2f} {a_s[k] - b_s[k]:7.2f}  {k}")


if __name__ == "__main__":
    main()
