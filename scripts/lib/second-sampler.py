#!/usr/bin/env python3
"""What the node and its core went through, sample by sample, during an open-loop run
(bench-node.sh): every INTERVAL s, the wall clock, the steal ticks of the server's CPU
(/proc/stat), the node's fdatasync histogram (cumulative bucket counts from /metrics)
and how long its sequencer thread has waited on a run queue for a CPU
(/proc/PID/task/TID/schedstat: after a sync it waits for the core the HTTP worker
holds), one JSON line each, until SIGTERM. One keep-alive connection and no child
processes, so it takes a few hundred µs of the load generator's core a second.

    second-sampler.py PORT SERVER_CPU NODE_PID OUT [INTERVAL]

`summarize` then gives, per window of an openloop result (its `startUnixMs` and
`windows`), the syncs that took longer than each bound and the core's steal:

    second-sampler.py summarize SAMPLES OPENLOOP_JSON TICKS_PER_S
"""
import http.client
import json
import os
import signal
import sys
import time

METRIC = "flashsale_engine_fsync_us_bucket"


def steal_ticks(cpu):
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if parts[0] == "cpu" + cpu:
                return int(parts[8])
    return 0


def sequencer_task(pid):
    """The schedstat path of the node's `sequencer` thread, if it has one."""
    for tid in os.listdir("/proc/%s/task" % pid):
        try:
            with open("/proc/%s/task/%s/comm" % (pid, tid)) as f:
                if f.read().strip() == "sequencer":
                    return "/proc/%s/task/%s/schedstat" % (pid, tid)
        except OSError:
            pass
    return None


def run_queue_ns(path):
    try:
        with open(path) as f:
            return int(f.read().split()[1])
    except (OSError, TypeError, IndexError, ValueError):
        return None


def fsync_buckets(conn):
    conn.request("GET", "/metrics")
    body = conn.getresponse().read().decode()
    out = {}
    for line in body.splitlines():
        if line.startswith(METRIC + "{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            key = "+Inf" if le == "+Inf" else "%g" % float(le)
            out[key] = float(line.rsplit(" ", 1)[1])
    return out


def sample(port, cpu, pid, out_path, interval):
    stop = []
    seq = sequencer_task(pid)
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=5)
    with open(out_path, "w") as out:
        while not stop:
            t = time.time()
            try:
                buckets = fsync_buckets(conn)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=5)
                buckets = None
            out.write(json.dumps({"t": t, "steal": steal_ticks(cpu), "fsync": buckets,
                                  "seq_wait_ns": run_queue_ns(seq)}) + "\n")
            out.flush()
            time.sleep(max(0.0, interval - (time.time() - t)))


def summarize(samples_path, openloop_path, hz):
    samples = [json.loads(l) for l in open(samples_path) if l.strip()]
    samples = [s for s in samples if s["fsync"]]
    run = json.load(open(openloop_path))
    start = run["startUnixMs"] / 1000.0
    bounds = ["3200", "6400", "12800"]

    def at(t):
        """The last sample at or before t (the first one, before it)."""
        best = samples[0] if samples else None
        for s in samples:
            if s["t"] <= t:
                best = s
        return best

    def over(a, b, le):
        # syncs in (le, +Inf] between samples a and b
        inf_a, inf_b = a["fsync"].get("+Inf", 0), b["fsync"].get("+Inf", 0)
        return int((inf_b - b["fsync"].get(le, 0)) - (inf_a - a["fsync"].get(le, 0)))

    print("  second  p99_ms  syncs>3.2ms  >6.4ms  >12.8ms  steal_ms  sequencer_waited_ms")
    for w in run.get("windows", []):
        t0 = start + w[0] / 1000.0
        a, b = at(t0), at(t0 + 1.0)
        if a is None or b is None or a is b:
            continue
        counts = [over(a, b, le) for le in bounds]
        steal_ms = (b["steal"] - a["steal"]) * 1000.0 / hz
        waited = "-"
        if a.get("seq_wait_ns") is not None and b.get("seq_wait_ns") is not None:
            waited = "%.0f" % ((b["seq_wait_ns"] - a["seq_wait_ns"]) / 1e6)
        print("  %6d  %6.1f  %11d  %6d  %7d  %8.0f  %19s" % (w[0] // 1000, w[3], *counts, steal_ms, waited))


if __name__ == "__main__":
    if sys.argv[1] == "summarize":
        summarize(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sample(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4],
               float(sys.argv[5]) if len(sys.argv) > 5 else 0.25)
