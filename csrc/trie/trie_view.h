// The read-only view of a trie that every kernel (CPU and CUDA) takes.
//
// Nodes are numbered breadth-first with children in ascending token order, so the children of
// node n are exactly nodes child_begin[n] + 1 ... child_begin[n + 1]: edge e leads to node e + 1
// and no child-id array is needed. A node costs one offset, one token and one terminal bit.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define PYFASTSEQ_HD __host__ __device__ __forceinline__
#else
#define PYFASTSEQ_HD inline
#endif

namespace pyfastseq {

struct TrieView {
  const uint32_t* child_begin = nullptr;  // [num_nodes + 1] edge range of each node
  const int32_t* child_token = nullptr;   // [num_nodes - 1] ascending within a node
  const uint64_t* terminal = nullptr;     // [ceil(num_nodes / 64)] bit n: a sequence ends at node n
  int32_t num_nodes = 0;

  PYFASTSEQ_HD int32_t num_children(int32_t node) const {
    return static_cast<int32_t>(child_begin[node + 1] - child_begin[node]);
  }
  PYFASTSEQ_HD bool is_terminal(int32_t node) const {
    return (terminal[node >> 6] >> (node & 63)) & 1u;
  }
  // The first edge in [lo, hi) (edges of one node) whose token is >= key, or hi.
  PYFASTSEQ_HD uint32_t lower_bound(uint32_t lo, uint32_t hi, int64_t key) const {
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo) / 2;
      if (child_token[mid] < key) lo = mid + 1; else hi = mid;
    }
    return lo;
  }
  // The child of `node` reached by `token`, or -1. Binary search: nodes with tens of thousands of
  // children (title tries) take ~15 probes, 256-way semantic-ID nodes take 8.
  PYFASTSEQ_HD int32_t child(int32_t node, int32_t token) const {
    const uint32_t e = lower_bound(child_begin[node], child_begin[node + 1], token);
    return (e < child_begin[node + 1] && child_token[e] == token) ? static_cast<int32_t>(e) + 1 : -1;
  }
};

// The children of a device trie's widest nodes as bitmaps over the tokens, beside its TrieView.
// A node with thousands of children (a title trie's first tokens) is then tested token by token
// while its row's logits stream past, instead of being gathered through child_token.
struct WideNodes {
  const int32_t* node = nullptr;   // [count] ascending
  const uint32_t* bits = nullptr;  // [count, words] bit t of row j: token t is a child of node[j]
  int64_t count = 0;
  int64_t words = 0;

  // The bitmap of `n`'s children, or null when n is not one of the wide nodes.
  PYFASTSEQ_HD const uint32_t* children_of(int32_t n) const {
    int64_t lo = 0, hi = count;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (node[mid] < n) lo = mid + 1; else hi = mid;
    }
    return lo < count && node[lo] == n ? bits + lo * words : nullptr;
  }
};

}  // namespace pyfastseq
