#!/usr/bin/env bash
# One device call of the GPU arming plan (issue #20): run bench processes of the nightly GPU line,
# then copy what they recorded (baselines/, history/) and their run records under $OUT, which the
# device tool brings back. Print the armed line and the time breakdown of each process last.
#
#   bash scripts/gpu_arm_call.sh MODE N [extra pytest args]
#     MODE: update (first process --update-baselines, the rest --append-baselines) | append | check
#
# Arming an H100 from nothing, three calls of <= 600 s (a process is ~230 s warm):
#   1. bash scripts/gpu_arm_call.sh update 2      # 1 recording + 1 appended process
#   2. bash scripts/gpu_arm_call.sh append 1      # the third recorded process (bands need 3)
#   3. bash scripts/gpu_arm_call.sh check 2       # two checks, exactly as `nox -s gpu` runs them
# (copy $OUT/baselines and $OUT/history back into the checkout between calls).
set -uo pipefail
mode=${1:?MODE: update | append | check}
count=${2:?N processes}
shift 2
out=${OUT:-out/gpu-arm}
args=(-p no:cacheprovider --device cuda --model dummy:pythia-2.8b --dtype float16 --tokens 4096 --window 2044
      --strategies all --report-dir "$out/reports" "$@")
mkdir -p "$out"
for i in $(seq 1 "$count"); do
    case "$mode" in
        update) flag=$([ "$i" = 1 ] && echo --update-baselines || echo --append-baselines) ;;
        append) flag=--append-baselines ;;
        check) flag=--nightly ;;
        *) echo "gpu_arm_call: error: MODE must be update, append or check" >&2; exit 2 ;;
    esac
    python -m pytest bench "${args[@]}" $flag > "$out/process-$i.txt" 2>&1
    echo "process $i ($flag): exit $?" >> "$out/summary.txt"
done
cp -r baselines history "$out/"
for i in $(seq 1 "$count"); do
    grep -E "^armed |^time: |passed|failed" "$out/process-$i.txt" | sed "s/^/[$i] /"
done
cat "$out/summary.txt"
