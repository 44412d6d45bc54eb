"""``runtimes.block_pool.BlockPool``: a block is handed out again only once no array over it is alive (the
array itself, a slice of it, a reshaped view, a torch tensor over it), at most ``keep`` idle blocks wait per
size, and blocks of other sizes never mix. Plain numpy: no runtime needed."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from seqedge.runtimes.block_pool import BlockPool


def test_a_block_comes_back_only_when_no_view_of_it_is_alive():
    pool = BlockPool(keep=2)
    block, address = pool.take(12)
    assert block.shape == (12,) and block.dtype == np.float32 and block.flags.writeable
    assert address == block.ctypes.data
    block[:] = 7
    kept = [block[3:9].reshape(2, 3), torch.from_numpy(block[:4])]
    del block
    gc.collect()
    assert pool.idle(12) == 0, "a view is alive: the block must not wait for reuse"
    other, other_address = pool.take(12)
    assert other_address != address
    other[:] = -1
    assert (kept[0] == 7).all() and (kept[1] == 7).all(), "another take wrote over a live view"
    kept.pop()
    assert pool.idle(12) == 0
    kept.clear()
    assert pool.idle(12) == 1
    _, again_address = pool.take(12)
    assert again_address == address and pool.idle(12) == 0


def test_at_most_keep_idle_blocks_and_sizes_apart():
    pool = BlockPool(keep=2)
    blocks = [pool.take(8)[0] for _ in range(4)] + [pool.take(5)[0]]
    blocks.clear()
    assert pool.idle(8) == 2 and pool.idle(5) == 1
    assert pool.take(5)[0].shape == (5,)
    assert BlockPool(keep=0).take(3)[0].shape == (3,)
    empty = BlockPool(keep=0)
    block = empty.take(3)[0]
    del block
    assert empty.idle(3) == 0
    with pytest.raises(ValueError, match="keep"):
        BlockPool(keep=-1)


def test_a_decode_loop_alternates_between_two_blocks():
    """The loop's pattern: the new state is taken while the old one is alive, then the old one is dropped."""
    pool = BlockPool()
    state, _ = pool.take(64)
    seen = set()
    for step in range(10):
        new, address = pool.take(64)
        new[:] = step
        seen.add(address)
        state = new
    assert len(seen) == 2 and (state == 9).all()
