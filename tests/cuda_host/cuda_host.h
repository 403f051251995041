// Stand-in for CUDA: compiles gpu_vgm/cuda_source.source() as host C++ (g++ -include this file),
// so tests/test_cuda_source.py can run the kernels without a GPU. Build with -ffp-contract=off
// and without -ffast-math: every + - * / is then one IEEE double operation, rounded to nearest,
// which is what the __d*_rn intrinsics are on the device.
#pragma once

#include <math.h>
#include <string.h>

// Qualifiers: kernels become plain extern "C" functions (g++ knows __restrict__ itself).
#define __device__
#define __global__
#define __forceinline__ inline

// One thread in one block of one: the grid-stride loops (start blockIdx.x * blockDim.x +
// threadIdx.x, stride blockDim.x * gridDim.x) then visit every row, in order.
struct vgm_host_dim3 {
    unsigned int x, y, z;
};
static const vgm_host_dim3 threadIdx = {0u, 0u, 0u};
static const vgm_host_dim3 blockIdx = {0u, 0u, 0u};
static const vgm_host_dim3 blockDim = {1u, 1u, 1u};
static const vgm_host_dim3 gridDim = {1u, 1u, 1u};

// IEEE double arithmetic, round to nearest, never fused (-ffp-contract=off).
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }

static inline double __longlong_as_double(long long bits)
{
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

static inline long long __double_as_longlong(double d)
{
    long long bits;
    memcpy(&bits, &d, sizeof bits);
    return bits;
}

static inline double __ull2double_rn(unsigned long long v) { return (double)v; }

// The other 31 lanes of this one-thread warp do not exist, so they add nothing: 0 keeps the
// reduced sum the thread's own (CUDA's out-of-range answer, the caller's value, would double it).
template <typename T>
static inline T __shfl_down_sync(unsigned int, T, unsigned int)
{
    return T(0);
}

static inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long v)
{
    const unsigned long long old = *address;
    *address = old + v;
    return old;
}
