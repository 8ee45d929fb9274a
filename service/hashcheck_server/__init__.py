"""The HashCheck server: hash lists in LMDB, numpy batch lookups, gRPC.

The words used throughout:

- hash: the fixed-width digest of one file (MD5, SHA-1, SHA-256).
- list: a named set of hashes from one source (a police database, a hotline's
  export), with a category per hash saying how that source graded it.
- table: per algorithm, every known hash once, sorted, in one LMDB value; a
  hash's row number in it is what list bitmaps hold.
- generation: one committed state of all tables and lists. Every change makes
  the next generation in a single LMDB write transaction; servers switch to it
  while the previous one keeps answering the calls already running.
- hit: a checked hash that is on at least one live list.
"""
