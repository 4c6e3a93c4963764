// The trie file format, version 2 (little-endian):
//
//   header (64 bytes): magic "PYFSTRIE", u32 version, u32 header size, u64 num_nodes, u64 num_items,
//                      i32 eos_id, i32 max_token, u64 payload bytes, u64 checksum, 8 zero bytes
//   payload:           child_begin u32[num_nodes + 1], child_token i32[num_nodes - 1] and the terminal
//                      bitmap u64[ceil(num_nodes / 64)], each section zero-padded to 8 bytes.
//
// The checksum covers the header (its checksum field read as zero) and the payload. Version 1 files,
// whose checksum covers the payload only, still load; their eos_id is checked against the tokens.
//
// Loading checks the size, the checksum and then every structural invariant the kernels rely on
// (monotone offsets, children after their parent, ascending non-negative tokens, terminal leaves),
// so a corrupt or hostile file is rejected with InvalidArgument and can never cause an
// out-of-bounds read later.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <limits>
#include <string>

#include "common/errors.h"
#include "trie/trie.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the trie file format is little-endian");

namespace pyfastseq {
namespace {

constexpr char kMagic[8] = {'P', 'Y', 'F', 'S', 'T', 'R', 'I', 'E'};
constexpr uint32_t kVersion = 2;

struct FileHeader {
  char magic[8];
  uint32_t version;
  uint32_t header_bytes;
  uint64_t num_nodes;
  uint64_t num_items;
  int32_t eos_id;
  int32_t max_token;
  uint64_t payload_bytes;
  uint64_t checksum;
  uint64_t reserved;
};
static_assert(sizeof(FileHeader) == 64, "header layout");

constexpr uint64_t padded(uint64_t bytes) { return (bytes + 7) & ~uint64_t{7}; }

struct Layout {
  uint64_t begin_bytes, token_bytes, terminal_bytes;
  explicit Layout(uint64_t num_nodes)
      : begin_bytes(padded((num_nodes + 1) * 4)),
        token_bytes(padded((num_nodes - 1) * 4)),
        terminal_bytes((num_nodes + 63) / 64 * 8) {}
  uint64_t total() const { return begin_bytes + token_bytes + terminal_bytes; }
};

// The OS reads a NUL as the path's end: such a path would name another file.
void check_path(const std::string& path) {
  if (path.find('\0') != std::string::npos) fail("path must not contain a NUL character");
}

// A word-at-a-time multiplicative hash (`bytes` a multiple of 8) continuing from h: catches flipped
// bits and truncation; not cryptographic.
uint64_t hash_words(uint64_t h, const void* data, uint64_t bytes) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (uint64_t i = 0; i < bytes; i += 8) {
    uint64_t word;
    std::memcpy(&word, p + i, 8);
    h ^= word * 0xC2B2AE3D27D4EB4Full;
    h = ((h << 31) | (h >> 33)) * 0x9E3779B97F4A7C15ull;
  }
  return h;
}

uint64_t checksum(const FileHeader& header, const uint8_t* payload, uint64_t payload_bytes) {
  constexpr uint64_t kSeed = 0x9E3779B97F4A7C15ull;
  uint64_t h;
  if (header.version == 1) {
    h = hash_words(kSeed ^ payload_bytes, payload, payload_bytes);
  } else {
    FileHeader covered = header;
    covered.checksum = 0;
    h = hash_words(hash_words(kSeed ^ (sizeof covered + payload_bytes), &covered, sizeof covered), payload, payload_bytes);
  }
  return h ^ (h >> 29);
}

// `payload_bytes` is the size the header's node count implies (load checks that before reading).
void validate(const FileHeader& header, const uint8_t* payload, uint64_t payload_bytes) {
  const uint64_t n = header.num_nodes;
  const Layout layout(n);
  if (checksum(header, payload, payload_bytes) != header.checksum) fail("trie file checksum mismatch: the file is corrupt");
  if (header.reserved != 0) fail("trie file is corrupt: reserved header bytes are not zero");
  const auto* begin = reinterpret_cast<const uint32_t*>(payload);
  const auto* token = reinterpret_cast<const int32_t*>(payload + layout.begin_bytes);
  const auto* terminal = reinterpret_cast<const uint64_t*>(payload + layout.begin_bytes + layout.token_bytes);
  if (begin[0] != 0 || begin[n] != n - 1) fail("trie file is corrupt: bad child offsets");
  const auto terminal_at = [terminal](uint64_t node) { return ((terminal[node >> 6] >> (node & 63)) & 1u) != 0; };
  // No stored sequence is empty, and with an eos every one ends with it.
  if (terminal_at(0)) fail("trie file is corrupt: the root is terminal");
  uint64_t items = 0;
  int32_t max_token = -1;
  bool eos_seen = false;
  uint64_t entered_otherwise = 0;  // the first terminal node entered by a token other than eos_id
  for (uint64_t node = 0; node < n; ++node) {
    const uint32_t lo = begin[node], hi = begin[node + 1];
    if (hi < lo || hi > n - 1) fail("trie file is corrupt: child offsets decrease at node ", node);
    if (hi > lo && lo < node) fail("trie file is corrupt: node ", node, " has a child numbered before it");
    for (uint32_t e = lo; e < hi; ++e) {
      if (token[e] < 0 || (e > lo && token[e] <= token[e - 1]))
        fail("trie file is corrupt: child tokens of node ", node, " are not ascending and non-negative");
      max_token = std::max(max_token, token[e]);
      eos_seen |= token[e] == header.eos_id;
      if (header.eos_id >= 0 && token[e] != header.eos_id && terminal_at(e + 1) && !entered_otherwise)
        entered_otherwise = e + 1;
    }
    const bool is_terminal = terminal_at(node);
    if (hi == lo && !is_terminal) fail("trie file is corrupt: leaf ", node, " is not terminal");
    items += is_terminal;
  }
  if (n % 64 != 0 && (terminal[n >> 6] >> (n & 63)) != 0) fail("trie file is corrupt: stray terminal bits");
  if (items != header.num_items) fail("trie file is corrupt: item count mismatch");
  if (max_token != header.max_token) fail("trie file is corrupt: max token mismatch");
  // Every entry of a trie with an eos ends with it, so a non-empty one holds it as a token.
  if (header.eos_id < -1 || (header.eos_id >= 0 && items > 0 && !eos_seen)) fail("trie file is corrupt: bad eos_id");
  if (entered_otherwise)
    fail("trie file is corrupt: node ", entered_otherwise, " is terminal but not entered by eos_id");
}

}  // namespace

Trie::~Trie() {
  if (mapping_ != nullptr) munmap(mapping_, mapping_size_);
}

void Trie::compute_depth() {
  // Breadth-first numbering makes each level a contiguous id range.
  int64_t lo = 0, hi = 1;
  depth_ = -1;
  while (lo < hi) {
    ++depth_;
    const int64_t next_lo = static_cast<int64_t>(view_.child_begin[lo]) + 1;
    const int64_t next_hi = static_cast<int64_t>(view_.child_begin[hi]) + 1;
    lo = next_lo;
    hi = next_hi;
  }
}

void Trie::save(const std::string& path) const {
  check_path(path);
  const uint64_t n = static_cast<uint64_t>(view_.num_nodes);
  const Layout layout(n);
  std::vector<uint8_t> payload(layout.total(), 0);
  std::memcpy(payload.data(), view_.child_begin, (n + 1) * 4);
  if (n > 1) std::memcpy(payload.data() + layout.begin_bytes, view_.child_token, (n - 1) * 4);
  std::memcpy(payload.data() + layout.begin_bytes + layout.token_bytes, view_.terminal, layout.terminal_bytes);
  FileHeader header{};
  std::memcpy(header.magic, kMagic, 8);
  header.version = kVersion;
  header.header_bytes = sizeof(FileHeader);
  header.num_nodes = n;
  header.num_items = static_cast<uint64_t>(num_items_);
  header.eos_id = eos_id_;
  header.max_token = max_token_;
  header.payload_bytes = layout.total();
  header.checksum = checksum(header, payload.data(), payload.size());
  // A new file renamed over `path`: tries mapping the old file keep reading it (rewriting it in place
  // would end their processes with SIGBUS), a failed write leaves the old file whole, and a FIFO at
  // `path` is replaced rather than waited on.
  static std::atomic<uint64_t> saves{0};
  std::string temp;
  int fd = -1;
  for (int attempt = 0; fd < 0 && attempt < 100; ++attempt) {
    temp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(saves++);
    fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) fail("path: cannot create a file beside '", path, "' to write the trie to");
  const auto write_all = [fd](const void* data, uint64_t bytes) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (bytes > 0) {
      const ssize_t put = ::write(fd, p, bytes);
      if (put < 0 && errno == EINTR) continue;
      if (put <= 0) return false;
      p += put;
      bytes -= static_cast<uint64_t>(put);
    }
    return true;
  };
  const bool written = write_all(&header, sizeof header) && write_all(payload.data(), payload.size()) &&
                       ::fsync(fd) == 0;
  if (::close(fd) != 0 || !written) {
    ::unlink(temp.c_str());
    fail("path: writing '", path, "' failed");
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    const bool directory = errno == EISDIR;  // read before unlink can change errno
    ::unlink(temp.c_str());
    fail("path: cannot replace '", path, "'", directory ? " (a directory)" : "");
  }
}

std::unique_ptr<Trie> Trie::load(const std::string& path, bool mmap) {
  check_path(path);
  // O_NONBLOCK: opening a FIFO must not wait for a writer before the check below rejects it.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail("path: cannot open '", path, "'");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("path: '", path, "' is not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  FileHeader header{};
  if (size < sizeof header || ::pread(fd, &header, sizeof header, 0) != static_cast<ssize_t>(sizeof header)) {
    ::close(fd);
    fail("trie file '", path, "' is truncated: no complete header");
  }
  if (std::memcmp(header.magic, kMagic, 8) != 0) {
    ::close(fd);
    fail("'", path, "' is not a pyfastseq trie file (bad magic)");
  }
  if (header.version < 1 || header.version > kVersion) {
    ::close(fd);
    fail("trie file '", path, "' has unsupported version ", header.version, " (this build reads versions 1 to ",
         kVersion, ")");
  }
  if (header.header_bytes != sizeof header) {
    ::close(fd);
    fail("trie file is corrupt: header size ", header.header_bytes, " (expected ", sizeof header, ")");
  }
  if (header.num_nodes < 1 || header.num_nodes > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
    ::close(fd);
    fail("trie file is corrupt: bad node count ", header.num_nodes);
  }
  // Before any of the payload is mapped or read: a file padded far past its header's size costs nothing.
  const uint64_t payload_bytes = Layout(header.num_nodes).total();
  if (header.payload_bytes != payload_bytes) {
    ::close(fd);
    fail("trie file is corrupt: its header gives a payload of ", header.payload_bytes, " bytes where ",
         header.num_nodes, " nodes take ", payload_bytes);
  }
  if (size - sizeof header != payload_bytes) {
    ::close(fd);
    fail("trie file is truncated or has trailing bytes (payload ", size - sizeof header, " bytes, expected ",
         payload_bytes, ")");
  }

  std::unique_ptr<Trie> trie(new Trie());
  const uint8_t* payload = nullptr;
  if (mmap) {
    void* mapped = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (mapped == MAP_FAILED) fail("path: cannot memory-map '", path, "'");
    trie->mapping_ = mapped;
    trie->mapping_size_ = size;
    payload = static_cast<const uint8_t*>(mapped) + sizeof header;
  } else {  // read whole into one buffer the views then point into: no second copy of the arrays
    trie->loaded_.resize(payload_bytes / 8);  // every section is padded to 8 bytes
    auto* buffer = reinterpret_cast<uint8_t*>(trie->loaded_.data());
    uint64_t done = 0;
    while (done < payload_bytes) {
      const ssize_t got = ::pread(fd, buffer + done, payload_bytes - done, static_cast<off_t>(sizeof header + done));
      if (got <= 0) break;
      done += static_cast<uint64_t>(got);
    }
    ::close(fd);
    if (done != payload_bytes) fail("path: reading '", path, "' failed");
    payload = buffer;
  }
  validate(header, payload, payload_bytes);  // throws; the unique_ptr unmaps

  const uint64_t n = header.num_nodes;
  const Layout layout(n);
  trie->set_views(reinterpret_cast<const uint32_t*>(payload),
                  reinterpret_cast<const int32_t*>(payload + layout.begin_bytes),
                  reinterpret_cast<const uint64_t*>(payload + layout.begin_bytes + layout.token_bytes),
                  static_cast<int32_t>(n));
  trie->num_items_ = static_cast<int64_t>(header.num_items);
  trie->eos_id_ = header.eos_id;
  trie->max_token_ = header.max_token;
  trie->compute_depth();
  return trie;
}

}  // namespace pyfastseq
