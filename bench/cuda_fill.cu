/* cuda_fill.cu: random bf16 weights generated on the GPU for bench/cuda_decode.c (a counter-based
 * hash, so any size fills at memory speed and the same seed gives the same weights). */
#include <cuda_runtime.h>
#include <stdint.h>

__global__ void fill_bf16_kernel(uint16_t *p, size_t n, unsigned long long seed, float scale)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
		unsigned long long z = (i + seed * 0x9e3779b97f4a7c15ull) * 0xbf58476d1ce4e5b9ull;
		z ^= z >> 31;
		z *= 0x94d049bb133111ebull;
		z ^= z >> 29;
		float f = ((float)(z >> 40) * (1.0f / 8388608.0f) - 1.0f) * scale;
		uint32_t u = __float_as_uint(f);
		p[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
	}
}

extern "C" int bench_fill_bf16(void *p, size_t n, unsigned long long seed, float scale)
{
	fill_bf16_kernel<<<4096, 256>>>((uint16_t *)p, n, seed, scale);
	return cudaDeviceSynchronize() == cudaSuccess ? 0 : -1;
}
