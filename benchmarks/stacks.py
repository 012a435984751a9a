"""Summarise py-spy collapsed stacks (``--format raw``): busy samples only, inclusive and self shares.

``python benchmarks/stacks.py FILE [TOP] [FILTER]``. Samples whose leaf frame is a wait (locks, queues,
selectors, sleeps) are dropped, so the shares are of the time the process actually computed.
"""

from __future__ import annotations

import sys
from collections import Counter

IDLE_LEAVES = (
    "Condition.wait",
    "Event.wait",
    "Queue.get",
    "select (selectors.py",
    "BaseSelector.select",
    "EpollSelector.select",
    "_worker (concurrent",
    "sleep",
    "Thread.join",
    "wait (threading.py",
    "_wait_for_tstate_lock",
    "accept (socket",
    "Lock.acquire",
    "SimpleQueue.get",
    "QueueListener.dequeue",
    "Event.wait (threading",
    "run_forever",
    "_run_once (asyncio/base_events.py:1898)",
)


def _idle(leaf: str) -> bool:
    return any(marker in leaf for marker in IDLE_LEAVES)


def summarise(path: str, top: int = 40, thread_filter: str = "") -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = busy = 0
    with open(path) as fh:
        lines_in = fh.read().splitlines()
    for line in lines_in:
        stack, _, count = line.rstrip().rpartition(" ")
        if not count.isdigit():
            continue
        if thread_filter and thread_filter not in stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        if _idle(frames[-1]):
            continue
        busy += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{busy} busy of {total} samples in {path}", "-- inclusive --"]
    lines += [f"{100 * n / max(busy, 1):6.1f}%  {f[:150]}" for f, n in inclusive.most_common(top)]
    lines.append("-- self --")
    lines += [f"{100 * n / max(busy, 1):6.1f}%  {f[:150]}" for f, n in own.most_common(top // 2)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(
        summarise(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40, sys.argv[3] if len(sys.argv) > 3 else "")
    )
