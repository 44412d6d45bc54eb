"""``runtimes.huge_pages``: which mappings are advised onto 2 MiB pages, and what advising does. The parsing and the
choice run on a written ``smaps`` text; on Linux with transparent huge pages a written private mapping is advised
for real (its bytes unchanged, huge pages under it afterwards), and a Session says what it got, with the same
logits whether or not its memory was advised."""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import platform

import numpy as np
import pytest
from _artifacts import ort_artifact

from seqedge.runtimes import huge_pages as hp

MiB = 1 << 20

SMAPS = """\
7f0000000000-7f0001000000 rw-p 00000000 00:00 0 
Size:              16384 kB
Rss:               16000 kB
AnonHugePages:      4096 kB
VmFlags: rd wr mr mw me ac 
7f0001000000-7f0001800000 rw-p 00000000 00:00 0 
Size:               8192 kB
Rss:                  20 kB
AnonHugePages:         0 kB
7f0002000000-7f0003000000 rw-p 00000000 fe:00 12345                      /tmp/weights.data
Size:              16384 kB
Rss:               16384 kB
AnonHugePages:         0 kB
55d000000000-55d004000000 rw-p 00000000 00:00 0                          [heap]
Size:              65536 kB
Rss:               65000 kB
AnonHugePages:         0 kB
7f0004000000-7f0005000000 ---p 00000000 00:00 0 
Size:              16384 kB
Rss:                   0 kB
AnonHugePages:         0 kB
7f0006000000-7f0007000000 rw-s 00000000 00:01 99                         /dev/zero (deleted)
Size:              16384 kB
Rss:               16384 kB
AnonHugePages:         0 kB
7f0008001000-7f0008200000 rw-p 00000000 00:00 0 
Size:               2044 kB
Rss:                2044 kB
AnonHugePages:         0 kB
7ffc00000000-7ffc01000000 rw-p 00000000 00:00 0                          [stack]
Size:              16384 kB
Rss:               16384 kB
AnonHugePages:         0 kB
"""


def test_smaps_parse_into_mappings():
    found = hp.parse_smaps(SMAPS)
    assert len(found) == 8
    first = found[0]
    assert (first.start, first.size, first.rss, first.huge) == (0x7F0000000000, 16 * MiB, 16000 * 1024, 4 * MiB)
    assert [m.anonymous for m in found] == [True, True, False, True, True, False, True, False]
    assert found[3].perms == "rw-p" and found[4].perms == "---p"


def test_private_anonymous_written_mappings_not_all_huge_are_looked_into():
    chosen = hp.candidates(hp.parse_smaps(SMAPS))
    # the anonymous mappings and the heap; not the file, the reserved range, the shared mapping, the one too small
    # for an aligned 2 MiB page, or the stack
    assert [(m.start, m.end) for m in chosen] == [(0x7F0000000000, 0x7F0001000000), (0x7F0001000000, 0x7F0001800000),
                                                  (0x55D000000000, 0x55D004000000)]
    whole = hp.Mapping(0x200000, 0x600000, "rw-p", True, 4 * MiB, 4 * MiB)           # already on huge pages
    assert hp.candidates([whole]) == []
    # address space reserved far beyond what is written (a sanitizer's shadow memory): its page map is not read
    reserved = hp.Mapping(0x10000000000, 0x10000000000 + 2 * hp.MAX_SPARSITY * MiB, "rw-p", True, MiB, 0)
    assert hp.candidates([reserved]) == []
    assert hp.candidates([dataclasses.replace(reserved, rss=2 * MiB)]) == [dataclasses.replace(reserved, rss=2 * MiB)]


def test_written_ranges_keep_the_huge_pages_almost_all_written():
    per = hp.HUGE_PAGE // hp.PAGE
    present = np.zeros(5 * per, bool)
    present[:per] = True                                   # whole
    present[per:2 * per] = True                            # whole, touching the first: one range
    present[2 * per:3 * per:2] = True                      # half: left alone
    present[4 * per:] = True
    present[4 * per] = False                               # all but one page: kept
    start = 0x40000000
    assert hp.written_ranges(present, start) == [(start, start + 2 * hp.HUGE_PAGE),
                                                 (start + 4 * hp.HUGE_PAGE, start + 5 * hp.HUGE_PAGE)]


@pytest.mark.parametrize("region, interior", [
    ((0x200000, 0x600000), (0x200000, 0x600000)),           # already aligned
    ((0x200001, 0x600000), (0x400000, 0x600000)),           # start rounded up
    ((0x1000, 0x400000), (0x200000, 0x400000)),            # one whole page inside
    ((0x201000, 0x3FF000), None),                           # none
])
def test_aligned_interior(region, interior):
    assert hp.aligned_interior(region) == interior


def test_off_says_why():
    assert hp.advise_written_memory(False).describe() == "off (turned off)"
    assert (hp.HugePages(advised_bytes=290 * MiB, huge_bytes=300 * MiB).describe()
            == "300 MiB of the process on 2 MiB pages (290 MiB advised at load)")


def _kernel_collapses() -> str | None:
    """Why this machine cannot collapse pages onto huge pages now, or None."""
    reason = hp.unavailable()
    if reason:
        return reason
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    return None if (major, minor) >= (6, 1) else f"kernel {platform.release()} has no MADV_COLLAPSE (6.1+)"


@pytest.mark.skipif(_kernel_collapses() is not None, reason=f"huge pages cannot be advised here: {_kernel_collapses()}")
def test_a_written_private_mapping_moves_onto_huge_pages_with_its_bytes():
    size, guard = 16 * MiB, hp.PAGE
    region = mmap.mmap(-1, size + 2 * guard, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = np.frombuffer(region, np.uint8).ctypes.data
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    # unreadable pages at both ends: the mapping between them cannot merge with a neighbour
    assert libc.mprotect(base, guard, 0) == 0 and libc.mprotect(base + guard + size, guard, 0) == 0
    data = np.frombuffer(region, np.uint8)[guard:guard + size]
    data[:] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    want = data.copy()
    start = base + guard

    def huge_under_region() -> int:
        return sum(m.huge for m in hp.parse_smaps(hp.SMAPS.read_text()) if start <= m.start and m.end <= start + size)

    assert huge_under_region() == 0
    report = hp.advise_written_memory()
    assert report.reason is None and report.advised_bytes >= size - 2 * hp.HUGE_PAGE
    assert huge_under_region() >= size - 2 * hp.HUGE_PAGE           # all but the unaligned ends
    np.testing.assert_array_equal(data, want)
    del data
    region.close()


@pytest.fixture(scope="module")
def ort_tiny_artifact(tmp_path_factory):
    return ort_artifact(tmp_path_factory, "gated")


def test_a_session_says_what_it_got_and_computes_the_same(ort_tiny_artifact):
    from seqedge.runtimes import load

    tokens = np.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    results = {}
    for pages in (False, True):
        session = load(ort_tiny_artifact, "onnxruntime-fused", huge_pages=pages)
        logits, state = session.prefill(tokens, session.init_state(1))
        results[pages] = (logits, state.numpy())
        said = session.describe()["huge_pages"]
        assert said == "off (turned off)" if not pages else (said.endswith("MiB advised at load)") or
                                                              said.startswith("off ("))
    np.testing.assert_array_equal(results[False][0], results[True][0])
    for a, b in zip(results[False][1], results[True][1]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="huge_pages must be True or False"):
        load(ort_tiny_artifact, "onnxruntime-fused", huge_pages="yes")
