#!/usr/bin/env bash
# Record the GPU suite baselines that `nox -s gpu` checks: Pythia-2.8b config, dummy fp16 weights,
# 4096 tokens, S=4 W=2044; then check them in separate processes (the A/A that shows the bands hold).
#
# What a GPU baseline holds now: each case's work counts (exact: aten ops, bytes, syncs, CUDA kernels,
# graph replays per step; keyed by software + GPU model) and its TPOT relative to the eager
# reference arm timed step for step in the same process (keyed by GPU model). Absolute TPOT is
# judged against the run history under REPORT_DIR/history/<fingerprint>/ (every run appends).
# One --update-baselines process records; APPEND more --append-baselines processes add their
# ratio as further runs (the band learns the process-to-process spread); CHECKS plain processes
# then check.
#
#   scripts/record_gpu_baselines.sh [APPEND] [CHECKS] [extra pytest args...]   (default 1 and 3)
set -euo pipefail
append=${1:-1}
checks=${2:-3}
shift 2 || shift $# || true
args=(-p no:cacheprovider --device cuda --model dummy:pythia-2.8b --dtype float16 --tokens 4096 --window 2044
      -W ignore::DeprecationWarning "$@")
python -m pytest bench "${args[@]}" --update-baselines || true
for _ in $(seq 1 "$append"); do
    python -m pytest bench "${args[@]}" --append-baselines || true
done
for i in $(seq 1 "$checks"); do
    echo "== check process $i of $checks =="
    python -m pytest bench "${args[@]}" || true
done
