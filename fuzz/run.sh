#!/usr/bin/env bash
# Runs every fuzz target in turn, one job at a time, and prints the executions of each.
#
#   fuzz/run.sh 60                  60 seconds per target
#   fuzz/run.sh --runs 1000000      a million inputs per target
#   fuzz/run.sh 600 status mesh     only these targets
#   fuzz/run.sh --merge             fold what the runs found into fuzz/corpus
#
# New inputs go to fuzz/scratch/<target> (ignored by git), with the committed corpus as
# read-only seeds, so a run leaves the repository unchanged. fuzz/dict/<target>.dict
# gives the mutator the fields, keys and edge values of each format. A crash stops the script
# and leaves its input in fuzz/artifacts/<target>.
#
# No sanitizer: the targets are safe Rust, so a panic is what we look for, and without
# ASan the build needs no nightly flags. FUZZ_TOOLCHAIN picks the toolchain (stable).
set -euo pipefail

cd "$(dirname "$0")"
toolchain="+${FUZZ_TOOLCHAIN:-stable}"
all=(annotations values metrics status mesh)

if [[ ${1:-} == --merge ]]; then
    for target in "${all[@]}"; do
        mkdir -p "scratch/$target"
        cargo "$toolchain" fuzz run -s none "$target" "corpus/$target" "scratch/$target" \
            -- -merge=1 2>&1 | grep -E '^MERGE-OUTER: [0-9]+ new files' || true
    done
    exit 0
fi

case ${1:-} in
    --runs) budget=(-runs="${2:?--runs needs a count}"); shift 2 ;;
    '' | *[!0-9]*) echo "usage: $0 SECONDS|--runs N [TARGET...] | --merge" >&2; exit 2 ;;
    *) budget=(-max_total_time="$1"); shift ;;
esac
targets=("${@:-${all[@]}}")

build=$(cargo "$toolchain" fuzz build -s none 2>&1) || { echo "$build" >&2; exit 1; }
log=$(mktemp -d)
total=0
for target in "${targets[@]}"; do
    mkdir -p "scratch/$target"
    start=$SECONDS
    cargo "$toolchain" fuzz run -s none "$target" "scratch/$target" "corpus/$target" -- \
        "${budget[@]}" -dict="dict/$target.dict" -jobs=1 -workers=1 -print_final_stats=1 \
        >"$log/$target" 2>&1 || {
        tail -n 40 "$log/$target" >&2
        echo "$target: failed; the input is in fuzz/artifacts/$target" >&2
        exit 1
    }
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log/$target")
    total=$((total + runs))
    printf '%-12s %12d executions in %5d s\n' "$target" "$runs" $((SECONDS - start))
done
printf '%-12s %12d executions\n' total "$total"
