#!/usr/bin/env bash
# Everything that needs a GPU, in one bounded run: build, the CUDA and Triton tests, the memory and
# race checkers, and the GPU benchmarks, in priority order.
#
#     OUT=gpu-results bash benchmarks/gpu_check.sh                 # every stage
#     OUT=gpu-results bash benchmarks/gpu_check.sh build tests     # some, in the order given
#
# Stages, in their default order: build, tests, bench-kernels, bench-attention (the training step,
# then the d = 128 goal shapes and L = 512, d = 64 as the step's layers), ncu-beam (Nsight Compute on
# the beam step's kernel), profile-attention (where the training step's time goes), racecheck,
# memcheck, bench-generate, attention-tests, bench-attention-all (the whole grid). Each stage runs
# under its own time limit and under what is left of GPU_CHECK_SECONDS (default 540) for the whole run; a
# stage that fails does not stop the later ones, and one with under 30 s left is skipped. Results
# go to $OUT: log.txt (every stage's output), summary.md (each stage's outcome and time, then the
# benchmark ratio table), and one pytest-benchmark JSON per benchmark stage. Wheels under .whl are
# installed first: xgrammar for the mask benchmark, and the test tools the machine's image may lack
# (pytest, pytest-xdist, hypothesis, pytest-benchmark, rapidfuzz, marisa-trie, lapx and their pure
# dependencies), for CPython 3.12.
#
# The build targets Hopper only (sm_90: the H100 and H200; other GPUs run its PTX) and installs
# without build isolation or dependencies: the machine's own torch, triton and build tools are used.
set -uo pipefail
cd "$(dirname "$0")/.." || exit
root=$PWD
out=${OUT:-$root/gpu-results}
mkdir -p "$out"
log=$out/log.txt summary=$out/summary.md
: > "$log"
printf '# GPU check\n\n| stage | result | seconds |\n|---|---|---|\n' > "$summary"
# PYTHONSAFEPATH: "python3 -m pytest" must not put the source tree (no compiled modules) on the path.
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONSAFEPATH=1
# The log names each attention kernel's chosen configuration and its tuning time, per key.
export TRITON_PRINT_AUTOTUNING=1
deadline=$((SECONDS + ${GPU_CHECK_SECONDS:-540}))

if compgen -G ".whl/*.whl" > /dev/null; then
  site=/tmp/gpu-check-site
  install_wheels() { python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$@" >> "$log" 2>&1; }
  # One pip call; should a wheel not fit this machine, the rest still go in one by one.
  install_wheels .whl/*.whl || for wheel in .whl/*.whl; do install_wheels --upgrade "$wheel"; done
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi

# Tests and benchmarks import the installed package (pytest puts python_tests/ and benchmarks/ on
# the path, not the root).
pytest_gpu() { python3 -m pytest -p no:cacheprovider -q "$@"; }
sanitizer() {
  local tool=$1; shift
  compute-sanitizer --tool "$tool" --error-exitcode 1 python3 -m pytest -p no:cacheprovider -q -m cuda "$@"
}

# Nsight Compute on a few launches of the beam step's kernel in one bench_cuda.py case (after the
# check's launches): throughput, occupancy and the warps' stall reasons, per kernel. Clocks are left
# alone (--clock-control none), as for the benchmarks.
ncu_beam() {
  ncu --clock-control none --kernel-name regex:"beam_step_kernel" --launch-skip 4 --launch-count 4 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section SchedulerStats \
    python3 -m pytest -p no:cacheprovider -q benchmarks/bench_cuda.py -k "$1" --benchmark-disable > "$2" 2>&1
  local rc=$?
  grep -E " (passed|failed|error)" "$2" | tail -1  # the pytest summary, for summary.md
  return $rc
}

stage_command() {
  case $1 in
    build)
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
      CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90" python3 -m pip install --no-build-isolation --no-deps . &&
      (cd / && python3 -c "import pyfastseq; pyfastseq.show_config()") ;;
    tests)
      pytest_gpu -m cuda python_tests --ignore=python_tests/test_attention.py ;;
    attention-tests)  # xdist: Triton compiles each worker's kernels in parallel (minutes serially)
      pytest_gpu $(python3 -c "import xdist" 2>/dev/null && echo "-n 8") -m cuda python_tests/test_attention.py ;;
    memcheck)
      sanitizer memcheck python_tests/test_beam_cuda.py python_tests/test_trie_mask.py python_tests/test_assignment.py ;;
    racecheck)
      sanitizer racecheck python_tests/test_beam_cuda.py -k "device_search or cuda_search" ;;
    bench-kernels)
      pytest_gpu benchmarks/bench_cuda.py -k "not generate" --benchmark-json="$out/cuda.json" ;;
    bench-attention)  # the training step first, then its layers' shape and the d = 128 goal shapes; the whole grid comes last
      pytest_gpu benchmarks/bench_attention.py -k training_step --benchmark-json="$out/attention_step.json"
      local step_rc=$?
      pytest_gpu benchmarks/bench_attention.py -k "512-64 or 1024-128 or 2048-128" --benchmark-json="$out/attention.json" &&
        [ $step_rc -eq 0 ] ;;
    profile-attention)
      python3 benchmarks/profile_attention.py --out "$out/attention_profile.txt" ;;
    ncu-beam)  # where the beam step's kernel spends its time: dense rows, then 140 constrained rows
      ncu_beam "dense_step and 4-64]" "$out/ncu_dense_step.txt"
      local dense_rc=$?
      ncu_beam "sparse_step and full-2-70-1000000]" "$out/ncu_sparse_step.txt" && [ $dense_rc -eq 0 ] ;;
    bench-attention-all)
      pytest_gpu benchmarks/bench_attention.py --benchmark-json="$out/attention_all.json" ;;
    bench-generate)
      pytest_gpu benchmarks/bench_cuda.py -k generate --benchmark-json="$out/generate.json" ;;
    *)
      echo "unknown stage $1"; return 2 ;;
  esac
}

declare -A limit=([build]=240 [tests]=240 [attention-tests]=360 [memcheck]=300 [racecheck]=240 [ncu-beam]=240
                  [bench-kernels]=240 [bench-attention]=300 [profile-attention]=120 [bench-generate]=300
                  [bench-attention-all]=540)
stages=("$@")
# The benchmarks check each case before timing it, so they come before the longer test stages.
[ ${#stages[@]} -eq 0 ] && stages=(build tests bench-kernels bench-attention ncu-beam profile-attention racecheck
                                   memcheck bench-generate attention-tests bench-attention-all)

for stage in "${stages[@]}"; do
  left=$((deadline - SECONDS))
  if [ "$left" -lt 30 ]; then
    printf '| %s | skipped: out of time | 0 |\n' "$stage" >> "$summary"
    continue
  fi
  budget=${limit[$stage]:-240}
  [ "$budget" -gt "$left" ] && budget=$left
  printf '\n==== %s (limit %ds)\n' "$stage" "$budget" | tee -a "$log"
  start=$SECONDS
  # A function cannot run under timeout(1) itself: run this script's stage in a child bash.
  timeout --kill-after=10 "$budget" bash -c "$(declare -f pytest_gpu sanitizer ncu_beam stage_command); out='$out'; stage_command $stage" \
    >> "$log" 2>&1
  rc=$?
  case $rc in
    0) result=passed ;;
    124 | 137) result="timed out after ${budget}s" ;;
    *) result="failed (exit $rc)" ;;
  esac
  # The pytest summary line, if the stage ran pytest.
  last=$(awk '/^==== /{line=""} / (passed|failed|error|skipped)/{line=$0} END{print line}' "$log" | tr -d '=' | xargs)
  printf '| %s | %s%s | %d |\n' "$stage" "$result" "${last:+: $last}" $((SECONDS - start)) >> "$summary"
  echo "$stage: $result" | tee -a "$log"
  [ "$stage" = build ] && [ $rc -ne 0 ] && break  # nothing else can run without the build
done

jsons=$(ls "$out"/*.json 2>/dev/null)
if [ -n "$jsons" ]; then
  printf '\n' >> "$summary"
  # shellcheck disable=SC2086
  python3 benchmarks/report.py $jsons >> "$summary" 2>> "$log"
fi
cat "$summary"
