"""A crowd that opens connections to a node (`make bench-connections`).

Holds BASE idle connections open, then opens NEW more one at a time. At the node's
--connections-max each newcomer makes the node close the connection idle the longest
(the oldest held here): the script waits for that close (up to 2 s) before it lets the
client side go. Below the limit it lets the oldest go itself at once. Prints the node's
CPU time per new connection (utime + stime from /proc, the run's 1 s tail included) and
how many of the held connections the node closed to make room. At the limit it stops
with an error the first time the node does not close the oldest one within 2 s.

usage: conn-flood.py PORT PID BASE NEW LIMIT_REACHED(0|1) LABEL
"""

import collections
import os
import select
import socket
import sys
import time

port, pid, base, new, at_limit, label = sys.argv[1:7]
port, pid, base, new, at_limit = int(port), int(pid), int(base), int(new), at_limit == "1"
tick = os.sysconf("SC_CLK_TCK")


def cpu_s():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick


held = collections.deque(socket.create_connection(("127.0.0.1", port)) for _ in range(base))
time.sleep(1.0)
c0, t0 = cpu_s(), time.monotonic()
closed_by_node = 0
for _ in range(new):
    held.append(socket.create_connection(("127.0.0.1", port)))
    oldest = held.popleft()
    poll = select.poll()
    poll.register(oldest, select.POLLIN)
    if poll.poll(2000 if at_limit else 0) and oldest.recv(1) == b"":
        closed_by_node += 1
    elif at_limit:
        sys.exit(f"{label}: the node did not close the connection idle the longest for a newcomer")
    oldest.close()
elapsed = time.monotonic() - t0
time.sleep(1.0)
c1 = cpu_s()
for s in held:
    s.close()
print(
    f"{label:<12} {base} idle held, {new} new in {elapsed:.1f} s: "
    f"{1e6 * (c1 - c0) / new:6.1f} us of the node's CPU per new connection, "
    f"{closed_by_node} closed by the node to make room"
)
