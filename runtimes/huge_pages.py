"""A runtime's weights on 2 MiB pages: the process's written anonymous memory advised to the kernel as huge.

A one-token step of a real-size model streams every weight once, hundreds of MB that the runtimes allocate
themselves (ONNX Runtime's prepacked matrices, XNNPACK's packed weights). On 4 KiB pages that stream crosses a
page every 4 KiB and misses the TLB often; on 2 MiB pages it reads faster. Linux backs an anonymous mapping with
huge pages when its transparent-huge-page mode is ``always``, or ``madvise`` and the mapping was advised;
distributions ship ``madvise``, and the runtimes do not advise their allocations (numpy does, for its arrays of
4 MB and more).

:func:`advise_written_memory`, called once a runtime has loaded a model, finds in the process's private anonymous
mappings every aligned 2 MiB range that is almost all written (at least :data:`MIN_WRITTEN` of its pages present,
from ``/proc/self/pagemap``; where that cannot be read, whole mappings that are) and advises those ranges with
``MADV_HUGEPAGE`` (later faults there take huge pages) and ``MADV_COLLAPSE`` (Linux 6.1+: the pages already written
move onto huge pages now, copied by the calling thread). The process's memory, not the runtime's alone, is the
scope because a runtime's weights are not told apart from other memory: a model loaded after another was closed
may sit in memory the process already had. The written share leaves sparse memory (thread stacks, reserved heaps)
alone, so advising adds little resident memory. Both calls are hints: values never change, and a kernel or mode
that refuses them (huge pages ``never``, a kernel before 6.1, another OS) leaves the memory as it was.
``benchmarks/results/huge_pages_ab.json`` measures what it buys a step. The C++ runner does the same once it has
loaded (runners/cpp/tools/huge_pages.cpp).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAGE = 4096
HUGE_PAGE = 2 << 20
MIN_WRITTEN = 0.9            # share of a 2 MiB range's pages written, below which it is left alone
# a mapping over this many times its resident bytes is address space reserved (a sanitizer's shadow memory, an
# allocator's arena), not memory in use: its page map is not read
MAX_SPARSITY = 1024
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
SMAPS = Path("/proc/self/smaps")
PAGEMAP = Path("/proc/self/pagemap")
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

Region = tuple[int, int]


@dataclass(frozen=True)
class Mapping:
    """One mapping of ``/proc/PID/smaps``: its addresses, permissions, whether it is anonymous, its size, resident
    bytes and bytes on huge pages."""

    start: int
    end: int
    perms: str
    anonymous: bool
    rss: int
    huge: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class HugePages:
    """What :func:`advise_written_memory` did: the bytes of the written 2 MiB ranges it advised (memory already on
    huge pages is not advised again), and the process's anonymous bytes on huge pages afterwards; ``reason`` says
    why nothing was advised."""

    advised_bytes: int = 0
    huge_bytes: int = 0
    reason: str | None = None

    def describe(self) -> str:
        if self.reason:
            return f"off ({self.reason})"
        return (f"{self.huge_bytes / 2**20:.0f} MiB of the process on 2 MiB pages ({self.advised_bytes / 2**20:.0f} "
                "MiB advised at load)")


def parse_smaps(text: str) -> list[Mapping]:
    """The mappings of a ``/proc/PID/smaps`` text. Anonymous: no file (inode 0) and no name, or ``[heap]`` or a
    named anonymous region (``[anon:...]``)."""
    found: list[Mapping] = []
    head: list[str] | None = None
    fields: dict[str, int] = {}

    def close() -> None:
        if head is not None:
            start, end = (int(x, 16) for x in head[0].split("-"))
            name = head[5] if len(head) > 5 else ""
            anonymous = head[4] == "0" and (name in ("", "[heap]") or name.startswith("[anon:"))
            found.append(Mapping(start, end, head[1], anonymous, fields.get("Rss", 0) * 1024,
                                 fields.get("AnonHugePages", 0) * 1024))

    for line in text.splitlines():
        first = line.split(" ", 1)[0]
        if "-" in first and not first.endswith(":"):
            close()
            head, fields = line.split(), {}
        elif first.endswith(":") and head is not None:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[first[:-1]] = int(parts[1])
    close()
    return found


def candidates(mappings: list[Mapping]) -> list[Mapping]:
    """The mappings :func:`advise_written_memory` looks into: private, writable, anonymous, holding a whole aligned
    huge page, written somewhere (at least one part in :data:`MAX_SPARSITY` of it) and not all on huge pages
    already."""
    return [m for m in mappings if m.anonymous and m.perms.startswith("rw") and m.perms[3:4] == "p"
            and 0 < m.rss and m.size <= MAX_SPARSITY * m.rss and m.huge < _interior_bytes(m)]


def written_ranges(present: np.ndarray, start: int) -> list[Region]:
    """The 2 MiB ranges, merged where they touch, in which at least :data:`MIN_WRITTEN` of the pages are present:
    ``present`` flags the 4 KiB pages from ``start`` (2 MiB aligned) on, whole huge pages of them."""
    per_huge = HUGE_PAGE // PAGE
    dense = present.reshape(-1, per_huge).mean(axis=1) >= MIN_WRITTEN
    ranges: list[Region] = []
    for i in np.flatnonzero(dense).tolist():
        lo = start + i * HUGE_PAGE
        if ranges and ranges[-1][1] == lo:
            ranges[-1] = (ranges[-1][0], lo + HUGE_PAGE)
        else:
            ranges.append((lo, lo + HUGE_PAGE))
    return ranges


def _present_pages(region: Region) -> np.ndarray | None:
    """Which 4 KiB pages of ``region`` are present (``/proc/self/pagemap``'s bit 63), or None where it cannot be
    read."""
    try:
        with PAGEMAP.open("rb") as f:
            f.seek(region[0] // PAGE * 8)
            raw = f.read((region[1] - region[0]) // PAGE * 8)
    except OSError:
        return None
    if len(raw) != (region[1] - region[0]) // PAGE * 8:
        return None
    return (np.frombuffer(raw, "<u8") >> np.uint64(63)).astype(bool)


def _written(mapping: Mapping) -> list[Region]:
    """The written 2 MiB ranges of ``mapping`` (:func:`written_ranges`); without a readable pagemap, its whole
    aligned interior where the mapping is written for at least :data:`MIN_WRITTEN` of its size."""
    interior = aligned_interior((mapping.start, mapping.end))
    if interior is None:
        return []
    present = _present_pages(interior)
    if present is None:
        return [interior] if mapping.rss >= MIN_WRITTEN * mapping.size else []
    return written_ranges(present, interior[0])


def _interior_bytes(mapping: Mapping) -> int:
    interior = aligned_interior((mapping.start, mapping.end))
    return 0 if interior is None else interior[1] - interior[0]


def aligned_interior(region: Region, page: int = HUGE_PAGE) -> Region | None:
    """The largest ``page``-aligned range inside ``region``, or None where it holds no whole page."""
    start = -(-region[0] // page) * page
    end = region[1] // page * page
    return (start, end) if end > start else None


def unavailable() -> str | None:
    """Why huge pages cannot be advised here, or None."""
    if not sys.platform.startswith("linux") or not SMAPS.exists():
        return "not Linux"
    try:
        mode = THP_MODE.read_text()
    except OSError:
        return "no transparent huge pages in this kernel"
    if "[never]" in mode:
        return "transparent huge pages are set to never"
    return None


def _madvise():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc.madvise


def advise(ranges: list[Region]) -> None:
    """Advise each 2 MiB-aligned range as huge (``MADV_HUGEPAGE``, then ``MADV_COLLAPSE``). Refusals are ignored:
    ``MADV_COLLAPSE`` answers EINVAL where part of a range was never written (it still collapses the rest) and on
    kernels before 6.1."""
    madvise = _madvise()
    for start, end in ranges:
        if madvise(start, end - start, MADV_HUGEPAGE) == 0:
            madvise(start, end - start, MADV_COLLAPSE)


def advise_written_memory(enabled: bool = True) -> HugePages:
    """Advise the process's written anonymous memory onto huge pages (see the module docstring); ``enabled=False``
    only records that it was turned off."""
    reason = "turned off" if not enabled else unavailable()
    if reason is not None:
        return HugePages(reason=reason)
    ranges = [r for m in candidates(parse_smaps(SMAPS.read_text())) for r in _written(m)]
    advise(ranges)
    return HugePages(sum(e - s for s, e in ranges), sum(m.huge for m in parse_smaps(SMAPS.read_text())))
