"""Throughput / overhead / memory benchmarks for b4transfer: ``python -m benchmarks.run --suite cpu --quick``.

OpenMP threads sleep instead of spin-waiting (``OMP_WAIT_POLICY=PASSIVE``, as the CLI sets it):
on a CPU shared with other jobs, spinning threads that lose their core stall every parallel
region (measured here: B4 inference at 2 threads 7x slower than at 1 thread with spinning, equal
with passive waiting). It must be set before torch loads, hence here; the value is recorded with
every result.
"""

from b4transfer.cli.entry import share_cores_politely

share_cores_politely()  # the CLI's own rule: PASSIVE unless OMP_WAIT_POLICY / GOMP_SPINCOUNT is set
