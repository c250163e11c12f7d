#!/bin/sh
# build.sh: builds the CUDA harnesses and the decode bench on a machine with nvcc (no GPU needed)
# into $OUTDIR (default build/cuda-carry), with the libraries the GPU machine may lack beside them,
# so that the folder can travel to the GPU machine and run there with tests/cuda/run.sh.
#   sh tests/cuda/build.sh            (then: run.sh on the GPU machine)
set -e
OUTDIR=${OUTDIR:-build/cuda-carry}
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}
make -j"$(nproc)" build/lib/libkvengine.a build/lib/libkvshared.a
mkdir -p "$OUTDIR/lib" build/obj/bench
CF="-std=c11 -O2 -g -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-format-truncation -I. -Ishared -I$CUDA_HOME/include"
LIBS="build/lib/libkvengine.a build/lib/libkvshared.a -L$CUDA_HOME/lib64 -lcudart_static -lcublas -lcjson -lstdc++ -lm -ldl -lrt -pthread"
"$NVCC" -O3 -std=c++17 -Xcompiler -Wall,-Wextra,-Werror -Werror all-warnings \
	-gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80 -c -o build/obj/bench/cuda_fill.o bench/cuda_fill.cu
cc $CF -o "$OUTDIR/test_cuda_ops" tests/cuda/test_cuda_ops.c $LIBS
cc $CF -o "$OUTDIR/test_cuda_golden" tests/cuda/test_cuda_golden.c $LIBS
cc $CF -o "$OUTDIR/bench_cuda_decode" bench/cuda_decode.c bench/cuda_timeline.c bench/dsv2_random.c bench/optime.c \
	build/obj/bench/cuda_fill.o $LIBS -lcupti
# libcjson is not on the GPU machine's image, and CUPTI (the bench's --timeline) may not be: they
# travel beside the programs
cp -L "$(ldd "$OUTDIR/test_cuda_ops" | awk '/libcjson/ {print $3}')" "$OUTDIR/lib/"
cp -L "$CUDA_HOME/lib64/libcupti.so.13" "$OUTDIR/lib/"
ls -la "$OUTDIR" "$OUTDIR/lib"
