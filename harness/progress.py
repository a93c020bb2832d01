"""Signs of life for long work that is not a training loop (the trainer prints its own).

``with step("attack gifd"):`` prints one line when the step starts and one when it ends (with its
wall time), and, off a terminal (CI logs, ``nohup`` files), a line every ``every`` seconds while it
runs, so a log never sits silent for minutes. On a terminal the work's own progress bars speak.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

HEARTBEAT_SECONDS = 30.0


@contextmanager
def step(label: str, every: float | None = None, stream=None) -> Iterator[dict[str, float]]:
    """Announce ``label``, keep announcing it off a terminal, and report its wall time at the end;
    the yielded dict gets ``seconds`` when the step ends."""
    stream = stream or sys.stderr
    every = HEARTBEAT_SECONDS if every is None else every
    print(f"[start] {label}", file=stream, flush=True)
    start = time.perf_counter()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every):
            print(f"[running] {label}: {time.perf_counter() - start:.0f} s", file=stream, flush=True)

    beating = threading.Thread(target=beat, daemon=True) if not stream.isatty() else None
    if beating:
        beating.start()
    timing: dict[str, float] = {}
    outcome = "failed"
    try:
        yield timing
        outcome = "done"
    finally:
        done.set()
        if beating:
            beating.join()
        timing["seconds"] = time.perf_counter() - start
        print(f"[{outcome}] {label}: {timing['seconds']:.0f} s", file=stream, flush=True)
