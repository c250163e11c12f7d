#!/bin/sh
# cuda_profile.sh: GPU time per kernel of one decode step (bf16 KV, 512 context, ops launched one by
# one) at each batch size given, through ncu with one metric (gpu__time_duration, one pass per
# kernel, clocks left alone); a table per batch sorted by total time. On the GPU machine, from the
# repository root, after tests/cuda/build.sh made build/cuda-carry and it travelled.
#   sh bench/cuda_profile.sh 1 8        (CSV and tables under $LOG, default $OUT, else /tmp)
D=build/cuda-carry
LOG=${LOG:-${OUT:-/tmp}}
mkdir -p "$LOG"
CUBLAS_DIR=$(dirname "$(ls /usr/local/cuda/lib64/libcublas.so.13 /usr/local/cuda*/lib*/libcublas.so.13 2>/dev/null | head -1)" 2>/dev/null)
export LD_LIBRARY_PATH="$PWD/$D/lib:$CUBLAS_DIR:/usr/local/cuda/lib64:$LD_LIBRARY_PATH"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
for B in ${*:-1}; do
	"$NCU" --clock-control none --profile-from-start off --metrics gpu__time_duration.sum --csv \
		"$D/bench_cuda_decode" --profile "$B" >"$LOG/prof-b$B.csv" 2>"$LOG/prof-b$B.err" || tail -5 "$LOG/prof-b$B.err"
	python3 bench/cuda_profile_sum.py "$LOG/prof-b$B.csv" "$B" | tee "$LOG/prof-b$B.txt"
done
