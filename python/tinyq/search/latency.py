"""Timing int8 against fp32: runs interleaved on one onnxruntime thread, medians of the calling
thread's CPU time (tinyq.search.auto's search, the benchmarks)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np

from tinyq.model import runner

LATENCY_BATCHES = (1, 256)
MIN_TIMED_S = 1.0  # fp32 runs add up to at least this much CPU time per batch size ...
MAX_REPEATS = 400  # ... within this many repeats, and never fewer than the repeats asked for


def settings(repeats: Dict[int, int], min_timed_s: float = MIN_TIMED_S) -> Dict[str, object]:
    """How a LatencyMeter timed, as reports record it."""
    return {"threads": 1, "clock": "calling thread's CPU time", "repeats": {str(k): v for k, v in repeats.items()},
            "min_timed_s": min_timed_s}


@dataclass
class Timing:
    fp32_ms: float
    int8_ms: float
    fp32_spread: float  # relative median absolute deviation of the fp32 runs

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms


class LatencyMeter:
    """fp32 and int8 runs interleaved (fp32, int8, fp32, int8, ...) on one thread, medians; as many
    repeats as asked, more where fp32's runs would add up to less than min_timed_s (MIN_TIMED_S).

    With one intra-op thread onnxruntime runs every kernel on the calling thread, so a run's time
    is that thread's CPU time (time.thread_time): the latency on an idle core, and what other
    processes on a shared machine disturb least (wall time on a busy 2-core machine moved
    speed-ups by +-40 % between identical models)."""

    def __init__(self, fp32_session, feeds: Dict[str, np.ndarray], repeats: Dict[int, int], min_timed_s: float = MIN_TIMED_S):
        self.sess32 = fp32_session
        self.repeats = repeats
        self.min_timed_s = min_timed_s
        fixed = runner.fixed_batch(fp32_session)
        n = len(next(iter(feeds.values())))
        self.inputs = {b: {k: np.ascontiguousarray(v[np.arange(b) % n]) for k, v in feeds.items()}
                       for b in ((fixed,) if fixed else LATENCY_BATCHES)}

    def __call__(self, sess8) -> Dict[int, Timing]:
        return self.side_by_side([sess8])[0]

    def side_by_side(self, sessions: Sequence) -> List[Dict[int, Timing]]:
        """Each int8 session against fp32, all interleaved in one run (fp32, a, b, fp32, a, b, ...),
        so that the int8 sessions' speed-ups are also comparable with each other."""
        per_batch = {b: self._interleaved(sessions, x, self.repeats.get(b, 5)) for b, x in self.inputs.items()}
        return [{b: timings[i] for b, timings in per_batch.items()} for i in range(len(sessions))]

    def _interleaved(self, sessions: Sequence, x, repeats: int) -> List[Timing]:
        order = [self.sess32, *sessions]
        times: List[List[float]] = [[] for _ in order]
        for sess in order:
            sess.run(None, x)  # warm-up
        start = time.thread_time()
        self.sess32.run(None, x)
        once = max(time.thread_time() - start, 1e-6)
        for _ in range(min(MAX_REPEATS, max(repeats, int(np.ceil(self.min_timed_s / once))))):
            for sess, t in zip(order, times):
                start = time.thread_time()
                sess.run(None, x)
                t.append(time.thread_time() - start)
        m32 = float(np.median(times[0]))
        spread = float(np.median(np.abs(np.array(times[0]) - m32)) / m32)
        return [Timing(m32 * 1e3, float(np.median(t)) * 1e3, spread) for t in times[1:]]
