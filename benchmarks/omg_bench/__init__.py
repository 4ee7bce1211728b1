"""``omg-bench``: speed and accuracy of every backend x precision, measured through the runtime
(:class:`omg_rt.Segmenter`) so the numbers are what users get.

- :mod:`.options`: the command line's choices and their validation.
- :mod:`.targets`: the model (bundle, checkpoint, preset or the synthetic checkpoint), the
  bundles exported from it, and one opened :class:`~omg_rt.Segmenter` per backend x precision
  (or the reason it was skipped).
- :mod:`.latency`: per-stage, end-to-end, throughput, cached-prompt and video latencies,
  interleaved across targets (one noisy machine: side by side, medians and ratios).
- :mod:`.coldstart`: load + first call, peak RSS and GPU memory, in a fresh subprocess.
- :mod:`.accuracy`: PQ / mask AP / mIoU / interactive mIoU / J&F on one dataset, deltas against
  FP32 PyTorch.
- :mod:`.photos`: ``--dataset photos``, real photos and a clip from package wheels, scored as
  agreement with the reference target.
- :mod:`.output`: ``report.json``, ``report.md``, ``plot.png`` and the ``RESULTS.md`` summary.
"""

from benchmarks.omg_bench.options import BenchOptions, OptionError
from benchmarks.omg_bench.run import run_benchmark

__all__ = ["BenchOptions", "OptionError", "run_benchmark"]
