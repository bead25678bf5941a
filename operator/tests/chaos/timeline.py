#!/usr/bin/env python3
"""Draws a chaos case's timeline: the crowd's acknowledgements per second, by the epoch
that answered, with the fault and the first acknowledgement at the new epoch marked.

    timeline.py ACKS.jsonl FAULT_UNIX_MS TITLE OUT.png
"""
import collections
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

acks_file, fault_ms, title, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
acks = [json.loads(l) for l in open(acks_file) if l.strip()]
if not acks:
    sys.exit("no acknowledgements to draw")
t0 = min(a["tMs"] for a in acks)
BIN_MS = 250  # each bar covers [t, t + 0.25 s), drawn from its left edge
per = collections.defaultdict(collections.Counter)
for a in acks:
    per[a["epoch"]][(a["tMs"] - t0) // BIN_MS] += 1
last = max((a["tMs"] - t0) // BIN_MS for a in acks)
xs = [b * BIN_MS / 1000 for b in range(last + 1)]
fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
bottom = [0] * (last + 1)
for epoch in sorted(per):
    ys = [per[epoch].get(b, 0) * 1000 / BIN_MS for b in range(last + 1)]
    ax.bar(xs, ys, bottom=bottom, width=BIN_MS / 1000 * 0.9, align="edge", label=f"epoch {epoch}")
    bottom = [b + y for b, y in zip(bottom, ys)]
fault = (fault_ms - t0) / 1000
ax.axvline(fault, color="red", linestyle="--", label="fault")
old = min(a["epoch"] for a in acks if a["tMs"] <= fault_ms) if any(a["tMs"] <= fault_ms for a in acks) else None
later = [a["tMs"] for a in acks if old is not None and a["epoch"] > old and a["tMs"] > fault_ms]
if later:
    first = (min(later) - t0) / 1000
    ax.axvline(first, color="green", linestyle=":", label=f"first ack at the new epoch (+{first - fault:.1f} s)")
ax.set_xlabel("seconds")
ax.set_ylabel("acknowledged purchases / s")
ax.set_title(title, fontsize=10)
ax.legend(fontsize=8, loc="upper right")
fig.tight_layout()
fig.savefig(out)
