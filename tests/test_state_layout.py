"""The state layout of the ExecuTorch backends' pooled states (``runtimes.state_layout.StateLayout``): the views
it makes of one block are the spec's shapes in spec order, disjoint and covering the block, and the address tables
the C API reads point at exactly those views' rows. No library is needed: the layout is plain numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqedge.runtimes.executorch_native import _address
from seqedge.runtimes.state_layout import StateLayout

SHAPES = st.lists(st.sampled_from([(5, 3), (2, 4, 4), (7,), (1, 1)]), min_size=1, max_size=7)


@settings(max_examples=40, deadline=None)
@given(dims=SHAPES, batch=st.integers(1, 4))
def test_views_cover_the_block_in_spec_order_and_tables_point_at_their_rows(dims, batch):
    layout = StateLayout(dims)
    assert layout.total == sum(int(np.prod(d)) for d in dims)
    block = np.empty(batch * layout.total, dtype=np.float32)
    views = layout.views(block, batch)
    assert [v.shape for v in views] == [(batch, *d) for d in dims]
    assert all(v.flags.c_contiguous and v.flags.writeable and np.shares_memory(v, block) for v in views)
    # every element of the block belongs to exactly one view
    block[:] = -1
    for i, v in enumerate(views):
        assert (v == -1).all(), "views overlap"
        v[...] = i
    assert (block >= 0).all(), "views leave part of the block out"
    base = _address(block)
    rows = layout.offsets(batch) + base
    for i, v in enumerate(views):
        for b in range(batch):
            assert rows[b, i] == v[b].ctypes.data


def test_two_tables_per_batch_and_addresses():
    layout = StateLayout([(3,), (2, 2)])
    first, second = layout.tables(2)
    assert first[0] is not second[0] and first[0].shape == (2, 2)
    assert (first[1], second[1]) == (first[0].ctypes.data, second[0].ctypes.data)
    assert layout.tables(2) == (first, second)          # kept, not remade per call
    a = np.zeros(8, np.float32)
    assert _address(a) == a.ctypes.data
    a.flags.writeable = False           # the library writes through these addresses: never a read-only array's
    with pytest.raises(TypeError):
        _address(a)
