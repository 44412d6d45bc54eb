// A loaded model's memory on 2 MiB pages: the process's written anonymous memory advised to the kernel as huge, as
// the Python sessions do after a runtime loads (runtimes/huge_pages.py says why and how).
#pragma once

#include <cstdint>
#include <string>

struct HugePages {
  std::uint64_t advised_bytes = 0;  // the written 2 MiB ranges advised (memory already on huge pages is not)
  std::uint64_t huge_bytes = 0;     // the process's anonymous bytes on huge pages afterwards
  std::string reason;               // why nothing was advised; empty where it was
};

// Advises every aligned 2 MiB range of the process's private anonymous mappings that has at least 90% of its pages
// written with MADV_HUGEPAGE, then MADV_COLLAPSE. Both are hints: values never change, and a kernel or mode that
// refuses them leaves the memory as it was. enabled=false only records that it was turned off.
HugePages advise_written_memory(bool enabled);
