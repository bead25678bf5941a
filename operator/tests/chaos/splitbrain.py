#!/usr/bin/env python3
"""Split-brain monitor for the failover chaos tests: every 250 ms, ask every node pod of
a sale for its role and lease (GET /admin/v1/status, all at once) and record which ones
hold a live selling lease as primaries. Runs until the stop file appears; exits 1 if any
sample saw two nodes with a live lease, and writes every sample as JSON lines.

    splitbrain.py --token T --pods 'name=ip,…' --out samples.jsonl --stop stopfile
"""
import argparse
import concurrent.futures
import json
import os
import sys
import time
import urllib.request

p = argparse.ArgumentParser()
p.add_argument("--token", required=True)
p.add_argument("--pods", required=True, help="name=ip,name=ip")
p.add_argument("--out", required=True)
p.add_argument("--stop", required=True)
p.add_argument("--every-ms", type=int, default=250)
a = p.parse_args()
pods = dict(x.split("=", 1) for x in a.pods.split(",") if x)


def ask(item):
    name, ip = item
    req = urllib.request.Request(
        f"http://{ip}:8080/admin/v1/status", headers={"Authorization": f"Bearer {a.token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=0.2) as r:
            s = json.load(r)
    except Exception:
        return name, None
    lease = s.get("lease") or {}
    live = s.get("role") == "primary" and lease.get("remainingMs", 0) > 0
    return name, {"role": s.get("role"), "epoch": s.get("epoch"), "remainingMs": lease.get("remainingMs", 0), "live": live}


samples = split = 0
with open(a.out, "w") as out, concurrent.futures.ThreadPoolExecutor(len(pods)) as pool:
    while not os.path.exists(a.stop):
        t = time.time()
        seen = dict(pool.map(ask, pods.items()))
        live = sorted(n for n, s in seen.items() if s and s["live"])
        samples += 1
        if len(live) > 1:
            split += 1
        out.write(json.dumps({"t": round(t, 3), "live": live, "nodes": seen}) + "\n")
        out.flush()
        time.sleep(max(0.0, a.every_ms / 1000 - (time.time() - t)))
print(json.dumps({"samples": samples, "splitBrain": split}))
sys.exit(1 if split else 0)
