#!/usr/bin/env python3
"""The disk's own sync latency, the floor under a durable answer's latency.

Usage: fsync-probe.py DIR RATE DURATION_S

Writes 1 KiB records at RATE per second, evenly spaced, over a file preallocated the
way the node's WAL segments are (zeros written and synced first, so a sync writes the
records alone), with an fdatasync after each: one group commit per record, nothing
else. Each sync is timed from when it was due (as openloop times requests), so a slow
one delays the ones after it as it would a node's batches. Prints one line:
`syncs N p50_ms X p99_ms Y p99.9_ms Z max_ms W`.
"""

import os
import sys
import time

SEGMENT = 16 << 20
RECORD = 1024


def main() -> None:
    directory, rate, duration = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    path = os.path.join(directory, "fsync-probe.seg")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        zeros = bytes(1 << 20)
        for _ in range(SEGMENT // len(zeros)):
            os.write(fd, zeros)
        os.fsync(fd)
        record = b"r" * RECORD
        n = int(rate * duration)
        lat = []
        start = time.monotonic()
        offset = 0
        for i in range(n):
            due = start + i / rate
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
            os.pwrite(fd, record, offset)
            offset = (offset + RECORD) % SEGMENT
            os.fdatasync(fd)
            lat.append((time.monotonic() - due) * 1e3)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    if not lat:
        print("syncs 0 p50_ms - p99_ms - p99.9_ms - max_ms -")
        return

    def q(p: float) -> float:  # nearest rank
        return lat[min(len(lat) - 1, max(0, int(-(-p * len(lat) // 1)) - 1))]

    print(
        "syncs %d p50_ms %.3f p99_ms %.3f p99.9_ms %.3f max_ms %.3f"
        % (len(lat), q(0.5), q(0.99), q(0.999), lat[-1])
    )


if __name__ == "__main__":
    main()
