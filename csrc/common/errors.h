// Errors the core raises on bad input. The bindings turn InvalidArgument into ValueError;
// the core itself never includes pybind11.
#pragma once
#include <stdexcept>
#include <string>

namespace pyfastseq {

struct InvalidArgument : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

inline std::string to_text(const std::string& s) { return s; }
inline std::string to_text(const char* s) { return s; }
template <class T>
std::string to_text(const T& value) { return std::to_string(value); }

// fail("tokens[", i, "] is negative") throws InvalidArgument with the parts concatenated.
template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::string message;
  ((message += to_text(parts)), ...);
  throw InvalidArgument(message);
}

}  // namespace pyfastseq
