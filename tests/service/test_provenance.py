"""Grouping hits by provenance: the packed fast path against numpy's own."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hashcheck_server.generation import _distinct_rows

flag_matrices = st.tuples(st.integers(0, 40), st.integers(1, 70)).flatmap(
    lambda shape: arrays(np.bool_, shape)
)


@settings(max_examples=300, deadline=None)
@given(flag_matrices)
def test_distinct_rows_groups_as_unique_over_rows(flags: np.ndarray) -> None:
    distinct, which = _distinct_rows(flags)

    assert len({row.tobytes() for row in distinct}) == len(distinct)
    assert {row.tobytes() for row in distinct} == {row.tobytes() for row in flags}
    assert np.array_equal(
        distinct[which.reshape(-1)], flags.reshape(-1, flags.shape[1])
    )
