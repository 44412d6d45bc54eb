#include "huge_pages.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <vector>

namespace {

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kHugePage = 2u << 20;
constexpr double kMinWritten = 0.9;  // share of a 2 MiB range's pages written, below which it is left alone
// a mapping over this many times its resident bytes is address space reserved, not memory in use: not scanned
constexpr std::uint64_t kMaxSparsity = 1024;
#ifndef MADV_COLLAPSE
constexpr int MADV_COLLAPSE = 25;  // Linux 6.1+; older headers lack it, older kernels answer EINVAL
#endif

struct Mapping {
  std::uint64_t start = 0, end = 0, rss = 0, huge = 0;
  std::string perms;
  bool anonymous = false;
};

// The mappings of /proc/self/smaps. Anonymous: no file (inode 0) and no name, or [heap] or a named anonymous region.
std::vector<Mapping> read_smaps() {
  std::ifstream in("/proc/self/smaps");
  std::vector<Mapping> found;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string first;
    words >> first;
    if (first.empty()) continue;
    const auto dash = first.find('-');
    if (dash != std::string::npos && first.back() != ':') {
      Mapping m;
      m.start = std::stoull(first.substr(0, dash), nullptr, 16);
      m.end = std::stoull(first.substr(dash + 1), nullptr, 16);
      std::string offset, device, inode, name;
      words >> m.perms >> offset >> device >> inode >> name;
      m.anonymous = inode == "0" && (name.empty() || name == "[heap]" || name.rfind("[anon:", 0) == 0);
      found.push_back(m);
    } else if (!found.empty() && first.back() == ':') {
      std::uint64_t kib = 0;
      if (!(words >> kib)) continue;
      if (first == "Rss:") found.back().rss = kib * 1024;
      if (first == "AnonHugePages:") found.back().huge = kib * 1024;
    }
  }
  return found;
}

bool aligned_interior(const Mapping& m, std::uint64_t& lo, std::uint64_t& hi) {
  lo = (m.start + kHugePage - 1) / kHugePage * kHugePage;
  hi = m.end / kHugePage * kHugePage;
  return hi > lo;
}

// The written 2 MiB ranges of [lo, hi) from /proc/self/pagemap's present bits (fd: the open pagemap, or -1); without
// a readable pagemap, the whole interior where the mapping is written for at least kMinWritten of its size.
std::vector<std::pair<std::uint64_t, std::uint64_t>> written(const Mapping& m, std::uint64_t lo, std::uint64_t hi,
                                                            int pagemap) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  constexpr std::uint64_t per_huge = kHugePage / kPage;
  std::uint64_t entries[per_huge];
  for (std::uint64_t start = lo; start < hi; start += kHugePage) {
    const ssize_t want = static_cast<ssize_t>(sizeof entries);
    if (pagemap < 0 || pread(pagemap, entries, sizeof entries, static_cast<off_t>(start / kPage * 8)) != want) {
      ranges.clear();
      if (static_cast<double>(m.rss) >= kMinWritten * static_cast<double>(m.end - m.start)) ranges.emplace_back(lo, hi);
      return ranges;
    }
    std::uint64_t present = 0;
    for (std::uint64_t e : entries) present += e >> 63;
    if (static_cast<double>(present) < kMinWritten * static_cast<double>(per_huge)) continue;
    if (!ranges.empty() && ranges.back().second == start) {
      ranges.back().second = start + kHugePage;
    } else {
      ranges.emplace_back(start, start + kHugePage);
    }
  }
  return ranges;
}

std::string unavailable() {
  std::ifstream smaps("/proc/self/smaps");
  if (!smaps) return "not Linux";
  std::ifstream mode_file("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string mode;
  if (!std::getline(mode_file, mode)) return "no transparent huge pages in this kernel";
  if (mode.find("[never]") != std::string::npos) return "transparent huge pages are set to never";
  return "";
}

}  // namespace

HugePages advise_written_memory(bool enabled) {
  HugePages out;
  out.reason = enabled ? unavailable() : "turned off";
  if (!out.reason.empty()) return out;
  const int pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  for (const Mapping& m : read_smaps()) {
    std::uint64_t lo = 0, hi = 0;
    const bool private_rw = m.perms.size() >= 4 && m.perms.compare(0, 2, "rw") == 0 && m.perms[3] == 'p';
    if (!m.anonymous || !private_rw || m.rss == 0 || !aligned_interior(m, lo, hi) || m.huge >= hi - lo) continue;
    if (m.end - m.start > kMaxSparsity * m.rss) continue;   // a reservation (e.g. a sanitizer's shadow memory)
    for (const auto& [start, end] : written(m, lo, hi, pagemap)) {
      void* at = reinterpret_cast<void*>(start);
      // refusals are ignored: MADV_COLLAPSE answers EINVAL on kernels before 6.1
      if (madvise(at, end - start, MADV_HUGEPAGE) == 0) madvise(at, end - start, MADV_COLLAPSE);
      out.advised_bytes += end - start;
    }
  }
  if (pagemap >= 0) close(pagemap);
  for (const Mapping& m : read_smaps()) out.huge_bytes += m.huge;
  return out;
}
