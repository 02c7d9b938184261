#!/usr/bin/env bash
# One part of a GPU session, each sized to fit a 10-minute command (a lent machine gives
# 30 minutes in all, so pick parts in this order of value). Results go to $OUT (the device
# tool's output folder) or out/gpu-session/; copy them back and commit benchmarks/RESULTS.md.
#
#   benchmarks/gpu_session.sh install      # editable install without deps (no network there)
#   benchmarks/gpu_session.sh gpu-tests    # pytest -m gpu: every kernel compiled and checked in bf16/fp16
#   benchmarks/gpu_session.sh ops          # attention, norms, masked-loss suites vs SDPA / eager / compile
#   benchmarks/gpu_session.sh step-base    # base B32xS512 dense: HF+SDPA vs ours, ours+cudagraph (no compile)
#   benchmarks/gpu_session.sh step-base-pad
#   benchmarks/gpu_session.sh profile      # where ours' step time goes (kernels ranked); profile-graph, profile-hf
#   benchmarks/gpu_session.sh step-large
#   benchmarks/gpu_session.sh compile      # the torch.compile rows of base dense (slow: compiles two models)
#   benchmarks/gpu_session.sh tests        # the whole suite on the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-out/gpu-session}"
mkdir -p "$out"
python="${PYTHON:-python}"
results="--results $out/RESULTS-part.md"  # merged into benchmarks/RESULTS.md by hand after review

case "${1:-}" in
  install)
    $python -m pip install --no-deps --no-build-isolation -e . 2>&1 | tail -2
    spanbert-fast info | tee "$out/info.txt" ;;
  gpu-tests)
    $python -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$out/gpu-tests.txt" | tail -30 ;;
  tests)
    $python -m pytest -q -p no:cacheprovider -x 2>&1 | tee "$out/tests.txt" | tail -30 ;;
  ops)
    spanbert-fast bench --suite ops --out "$out/ops" $results ;;
  step-base)
    spanbert-fast bench --suite step --step-preset base --step-variant dense --no-compile --out "$out/step-base" $results ;;
  step-base-pad)
    spanbert-fast bench --suite step --step-preset base --step-variant pad --no-compile --out "$out/step-base-pad" $results ;;
  step-large)
    spanbert-fast bench --suite step --step-preset large --step-variant dense --no-compile --out "$out/step-large" $results ;;
  compile)
    spanbert-fast bench --suite step --step-preset base --step-variant dense --out "$out/step-base-compile" $results ;;
  profile)  # one run per part: the device tool brings back at most 8 files
    $python -m benchmarks.profile_step --preset base --variant dense --out "$out/profile-ours" ;;
  profile-graph)
    $python -m benchmarks.profile_step --preset base --variant dense --cuda-graph --out "$out/profile-ours-graph" ;;
  profile-hf)
    $python -m benchmarks.profile_step --preset base --variant dense --impl hf --out "$out/profile-hf" ;;
  *)
    sed -n '2,14p' "$0"
    exit 2 ;;
esac
