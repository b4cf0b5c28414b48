"""Throughput / overhead / memory benchmarks for b4transfer: ``python -m benchmarks.run --suite cpu --quick``.

OpenMP threads sleep instead of spin-waiting (``OMP_WAIT_POLICY=PASSIVE``, unless set otherwise):
on a CPU shared with other jobs, spinning threads that lose their core stall every parallel
region (measured here: B4 inference at 2 threads 7x slower than at 1 thread with spinning, equal
with passive waiting). It must be set before torch loads, hence here; the value is recorded with
every result.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
