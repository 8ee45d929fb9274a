"""Benchmarks for issue 3: HashCheck against what users would build instead.

One run measures, per table size and on the same synthetic queries (seeded
random MD5 hashes, 0.1% of them hits), every way of answering "which of these
hashes are known":

- the lookup core in-process, and the memory-probe ceiling beside it;
- the server end to end over gRPC (unary and streaming, 1 and 2 workers), the
  SDK's streaming path, and a gRPC echo servicer as the transport ceiling;
- a Python set, Redis SMISMEMBER and PostgreSQL `= ANY` as the peers;
- latency percentiles, memory, disk, cold start and import speed.

Each figure is the median of several passes after one warm-up pass, and every
ratio compares figures of the same run. Results go to RESULTS.md and
results.json; `benchmarks/run` is the one command that sets everything up.
"""
