// Trie: an immutable prefix tree over int32 token sequences (seed 001's retrieval constraint).
//
// Built once from a flat token buffer + offsets, stored as a breadth-first CSR (see trie_view.h),
// saved in a versioned, checksummed binary format and loaded either into memory or memory-mapped
// read-only. Immutable after construction, so one Trie may be shared by any number of threads.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "trie/trie_view.h"

namespace pyfastseq {

class Trie {
 public:
  // Sequence i is tokens[offsets[i] : offsets[i + 1]]; eos_id >= 0 is appended to every sequence
  // that does not already end with it. Duplicates merge; a sequence that is a prefix of another
  // stays an entry of its own. Throws InvalidArgument on negative tokens, bad offsets, empty input.
  static std::unique_ptr<Trie> build(const int32_t* tokens, int64_t num_tokens, const int64_t* offsets,
                                     int64_t num_sequences, int32_t eos_id);
  // Reads (or, with mmap, maps read-only) a file written by save(); validates it completely so
  // that no later lookup can go out of bounds. Throws InvalidArgument on any defect.
  static std::unique_ptr<Trie> load(const std::string& path, bool mmap);
  void save(const std::string& path) const;

  ~Trie();
  Trie(const Trie&) = delete;
  Trie& operator=(const Trie&) = delete;

  const TrieView& view() const { return view_; }
  int32_t num_nodes() const { return view_.num_nodes; }
  int64_t num_items() const { return num_items_; }
  int32_t eos_id() const { return eos_id_; }      // -1 when none
  int32_t max_token() const { return max_token_; }  // -1 when the trie has no edge
  int32_t depth() const { return depth_; }          // length of the longest stored sequence
  bool memory_mapped() const { return mapping_ != nullptr; }

  int32_t walk(const int32_t* seq, int64_t len) const;  // node after seq, -1 if not a prefix

 private:
  Trie() = default;
  void set_views(const uint32_t* child_begin, const int32_t* child_token, const uint64_t* terminal,
                 int32_t num_nodes);
  void compute_depth();

  TrieView view_;
  int64_t num_items_ = 0;
  int32_t eos_id_ = -1;
  int32_t max_token_ = -1;
  int32_t depth_ = 0;
  std::vector<uint32_t> child_begin_;
  std::vector<int32_t> child_token_;
  std::vector<uint64_t> terminal_;
  std::vector<uint64_t> loaded_;  // a file's payload, read whole (load without mmap): the views point into it
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
};

}  // namespace pyfastseq
