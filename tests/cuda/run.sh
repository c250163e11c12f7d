#!/bin/sh
# run.sh: on the GPU machine, from the repository root, after tests/cuda/build.sh made
# build/cuda-carry here and it travelled: the op-by-op harness, the golden models on CUDA, the
# decode bench, then compute-sanitizer (memcheck) over the quick harness. Logs go to $LOG
# (default $OUT, else /tmp), each target's seconds to $LOG/times.txt (to plan the next call within
# the device's 10-minute limit). Exit status: non-zero if a check failed.
#   sh tests/cuda/run.sh [ops|golden|bench|sanitize|optime|goldenfuse|benchfuse|timeline ...]
#   (default: ops golden goldenfuse bench benchfuse sanitize)
# optime: where a prefill's and a decode step's time goes, op by op (bench_cuda_decode --optime).
# goldenfuse: the golden models with the fused decode ops at every size they take (the default
# fuses the norm and the MoE at one token only) and the L2 prefetch hint, which must change no
# result; benchfuse: the quick bench with KVGATE_CUDA_FUSE=0 (version 3), against bench's rows.
# ab: the quick bench's bf16 rows under each setting of the fused path (AB_SETTINGS: a list of
# space-free env assignments joined by ",", ";" between settings), for the defaults.
# timeline: decode steps at batch 1 and 8 as they run (graphs, PDL), kernel by kernel through CUPTI,
# default path then fused (bench_cuda_decode --timeline).
D=build/cuda-carry
LOG=${LOG:-${OUT:-/tmp}}
mkdir -p "$LOG"
CUBLAS_DIR=$(dirname "$(ls /usr/local/cuda/lib64/libcublas.so.13 /usr/local/cuda*/lib*/libcublas.so.13 \
	$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__file__))' 2>/dev/null)/cu13/lib/libcublas.so.13 \
	2>/dev/null | head -1)" 2>/dev/null)
export LD_LIBRARY_PATH="$PWD/$D/lib:$CUBLAS_DIR:/usr/local/cuda/lib64:$LD_LIBRARY_PATH"
what=${*:-ops golden goldenfuse bench benchfuse sanitize}
rc=0
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$LOG/gpu.txt"
for w in $what; do
	t0=$(date +%s)
	case $w in
	ops) "$D/test_cuda_ops" >"$LOG/ops.log" 2>&1; s=$?; cat "$LOG/ops.log" ;;
	golden) "$D/test_cuda_golden" >"$LOG/golden.log" 2>&1; s=$?; cat "$LOG/golden.log" ;;
	bench) "$D/bench_cuda_decode" >"$LOG/bench.log" 2>&1; s=$?; cat "$LOG/bench.log" ;;
	optime) "$D/bench_cuda_decode" --optime >"$LOG/optime.log" 2>&1; s=$?; cat "$LOG/optime.log" ;;
	goldenfuse) KVGATE_CUDA_FUSE=1 KVGATE_CUDA_PN=8 KVGATE_CUDA_MOE_FN=32 KVGATE_CUDA_L2PF=32 "$D/test_cuda_golden" >"$LOG/golden-fuse.log" 2>&1; s=$?
		tail -3 "$LOG/golden-fuse.log" ;;
	benchfuse) KVGATE_CUDA_FUSE=0 "$D/bench_cuda_decode" --quick >"$LOG/bench-fuse.log" 2>&1; s=$?
		cat "$LOG/bench-fuse.log" ;;
	ab) : >"$LOG/ab.log"
		F=KVGATE_CUDA_FUSE=1
		P=KVGATE_CUDA_L2PF
		echo "${AB_SETTINGS:-;$P=32;$F;$F,$P=32;$F,KVGATE_CUDA_DOWN1=0;$F,KVGATE_CUDA_PN=1,KVGATE_CUDA_MOE_FN=1;$F,KVGATE_CUDA_PN=1,KVGATE_CUDA_MOE_FN=1,$P=32;$F,KVGATE_CUDA_MLA_NS=8;$F,KVGATE_CUDA_MLA_UV=0}" |
			tr ';' '\n' | while read -r v; do
			echo "== ${v:-defaults}" | tee -a "$LOG/ab.log"
			env $(echo "$v" | tr ',' ' ') "$D/bench_cuda_decode" --quick >"$LOG/ab-one.log" 2>&1 || echo "exit $?" >>"$LOG/ab-one.log"
			grep -E '^(bf16|steps|forward|kv|exit)' "$LOG/ab-one.log" | tee -a "$LOG/ab.log"
		done
		! grep -q '^exit' "$LOG/ab.log"; s=$? ;;
	timeline) { "$D/bench_cuda_decode" --timeline && KVGATE_CUDA_FUSE=1 "$D/bench_cuda_decode" --timeline; } \
		>"$LOG/timeline.log" 2>&1; s=$?; cat "$LOG/timeline.log" ;;
	sanitize) timeout 240 compute-sanitizer --tool memcheck --print-limit 20 "$D/test_cuda_ops" --quick \
		>"$LOG/sanitize.log" 2>&1; s=$?; tail -5 "$LOG/sanitize.log" ;;
	esac
	[ $s -ne 0 ] && rc=$s && echo "== $w: exit $s"
	echo "== $w: $(($(date +%s) - t0)) s" | tee -a "$LOG/times.txt"
done
exit $rc
