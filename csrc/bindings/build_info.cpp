#include <pybind11/pybind11.h>

#include "common/cpu.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace py = pybind11;

namespace pyfastseq {

void bind_build_info(py::module_& m) {
  m.def("build_info", [] {
    py::dict info;
#if defined(__clang__)
    info["compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
    info["compiler"] = "gcc " __VERSION__;
#else
    info["compiler"] = "unknown";
#endif
#if defined(_OPENMP)
    info["openmp_threads"] = omp_get_max_threads();
#else
    info["openmp_threads"] = 0;
#endif
#if defined(__SANITIZE_ADDRESS__)
    info["sanitizers"] = "address,undefined";
#else
    info["sanitizers"] = "";
#endif
    info["avx2"] = cpu_has_avx2_fma();
    info["avx512"] = cpu_has_avx512();
    return info;
  }, "Compiler, OpenMP and sanitizer settings this module was built with, and whether its AVX2 and AVX-512\n"
     "builds run.");
}

}  // namespace pyfastseq
