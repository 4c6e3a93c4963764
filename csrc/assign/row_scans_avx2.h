// AVX2 builds of the solver's row scans (row_scans_avx2.cpp), on x86-64 with GCC or Clang;
// assign.cpp calls them only when the CPU has AVX2.
#pragma once

#include "assign/row_scans.h"
#include "common/cpu.h"

#if PYFASTSEQ_AVX2
// relax_columns over all n columns.
pyfastseq::Nearest pyfastseq_relax_avx2(const double* ci, const double* vm, const double* key, double h,
                                        double* d, int* path, int i, int n);
// The two cheapest of the first n & ~3 columns of row ci under prices v.
pyfastseq::CheapestTwo pyfastseq_cheapest_two_avx2(const double* ci, const double* v, int n);
// Whether no entry of the first nc & ~3 columns of src's nr rows (row stride rs) is NaN or -inf;
// raises *peak to their largest finite magnitude.
bool pyfastseq_check_costs_avx2(const double* src, int64_t nr, int64_t nc, int64_t rs, double* peak);
#endif
