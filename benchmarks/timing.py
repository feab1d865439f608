"""Interleaved timing: every variant runs once per round, so noise hits all alike.

    samples = interleaved({"a": run_a, "b": run_b}, repeats=5)
    stats = summarize(samples["a"])        # median, min, max, q1, q3, n

A round runs each variant once, starting at a different variant each round
(round-robin rotation), so no variant always runs first after a pause or
right after the heaviest one. Warm-up (compilation, first-call allocation)
happens before the rounds and is never recorded.

A sample can be several back-to-back calls (`calls`, chosen by
`calls_per_sample` from one more untimed call after warm-up) so that a variant whose call
takes a few milliseconds is not timed at the resolution of the machine's
noise; the sample is then the mean over its calls. Python's garbage from
earlier variants is collected before every sample (as `timeit` does), so a
fast variant does not pay for a slow one's allocations; the garbage a
variant makes during its own sample stays in its time.
"""

import dataclasses
import gc
import math
import statistics
import time
from typing import Callable, Dict, List, Optional


def time_call(fn):
  """Wall-clock seconds of one call of `fn()`."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def calls_for_duration(seconds_per_call, min_sample_s, max_calls=100):
  """Back-to-back calls per sample so that a sample lasts at least `min_sample_s`."""
  if not min_sample_s or seconds_per_call <= 0:
    return 1
  return max(1, min(max_calls, math.ceil(min_sample_s / seconds_per_call)))


def calls_per_sample(fn, min_sample_s):
  """Back-to-back calls of `fn` per sample, enough to last `min_sample_s`, judged
  from one extra call that is not recorded (1, and no call, when it is 0)."""
  if not min_sample_s:
    return 1
  return calls_for_duration(time_call(fn), min_sample_s)


def interleaved(fns: Dict[str, Callable[[], None]], repeats: int, *,
                budget_s: Optional[float] = None,
                progress: Optional[Callable[[int, Dict[str, float]], None]] = None,
                calls: Optional[Dict[str, int]] = None,
                ) -> Dict[str, List[float]]:
  """Runs `repeats` rounds of every function in `fns`; returns seconds per call.

  Args:
    fns: name -> a callable that does the timed work once.
    repeats: rounds.
    budget_s: a variant whose recorded time reaches this many seconds stops
      being run in later rounds (it keeps at least one sample), so one very
      slow variant cannot take the whole run; None: no cap.
    progress: called after each round with (round index, {name: seconds}).
    calls: name -> back-to-back calls per sample (default 1); the sample is
      their total time / calls.
  """
  names = list(fns)
  calls = calls or {}
  samples = {name: [] for name in names}
  for round_index in range(repeats):
    shift = round_index % len(names) if names else 0
    this_round = {}
    for name in names[shift:] + names[:shift]:
      if budget_s is not None and samples[name] and sum(samples[name]) >= budget_s:
        continue
      count = calls.get(name, 1)
      fn = fns[name]
      gc.collect()
      start = time.perf_counter()
      for _ in range(count):
        fn()
      seconds = (time.perf_counter() - start) / count
      samples[name].append(seconds)
      this_round[name] = seconds
    if progress is not None:
      progress(round_index, this_round)
  return samples


def numpy_call(fn):
  """fn() with its result read back to the host: one timed call of a compiled loop
  (the read waits for the device)."""
  return lambda: fn().numpy()


def loop_medians(loops, steps, repeats, min_sample_s=0.05):
  """{name: median µs per step} of compiled loops (one call runs `steps` steps and
  returns a tensor), each warmed up twice, then timed in interleaved rounds."""
  runners = {name: numpy_call(loop) for name, loop in loops.items()}
  for run in runners.values():
    run()
    run()
  calls = {name: calls_per_sample(run, min_sample_s) for name, run in runners.items()}
  samples = interleaved(runners, repeats, calls=calls)
  return {name: statistics.median(s) / steps * 1e6 for name, s in samples.items()}


@dataclasses.dataclass(frozen=True)
class Stats:
  """Order statistics of a list of samples (same unit as the samples)."""

  median: float
  min: float
  max: float
  q1: float
  q3: float
  n: int

  def scaled(self, factor):
    return Stats(self.median * factor, self.min * factor, self.max * factor,
                 self.q1 * factor, self.q3 * factor, self.n)

  def as_dict(self):
    return dataclasses.asdict(self)


def _quantile(sorted_values, q):
  """Linear-interpolation quantile (numpy's default) of sorted values."""
  if len(sorted_values) == 1:
    return sorted_values[0]
  position = q * (len(sorted_values) - 1)
  low = int(position)
  high = min(low + 1, len(sorted_values) - 1)
  frac = position - low
  return sorted_values[low] * (1 - frac) + sorted_values[high] * frac


def summarize(samples: List[float]) -> Optional[Stats]:
  if not samples:
    return None
  ordered = sorted(samples)
  return Stats(median=statistics.median(ordered), min=ordered[0], max=ordered[-1],
               q1=_quantile(ordered, 0.25), q3=_quantile(ordered, 0.75), n=len(ordered))
