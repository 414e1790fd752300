/*
 * cudaOnCpu.h: just enough CUDA for g++ to compile and run the DRSparseDepthwiseConv kernels' device code unchanged
 * on the CPU, block by block, and to record the global memory traffic each warp requests.
 *
 * Why: no GPU is in CI, and a hand-written copy of a kernel's algorithm proves nothing about the kernel itself
 * (shared-memory layout, barriers, lane mapping, the __half path). Including this header before a kernel's device
 * header (drSparseDwConvDevice*.cuh) makes the very text nvcc compiles run here.
 *
 * Model of execution (sequential, deterministic): the blocks of a launch run one after the other; inside a block
 * every CUDA thread is a fiber (ucontext) with its own stack, run until it reaches a barrier or returns:
 *   __syncthreads()   waits until every thread of the block that has not returned is at a block barrier;
 *   __syncwarp(),     wait until every lane of the warp that has not returned is at a warp barrier (warp-
 *   shuffles, votes   synchronous primitives exchange values through a per-warp slot array between two such
 *                     barriers, so each lane sees its partners' values of the same step);
 * a state where nothing can run (a barrier some threads never reach, divergent warp barriers) aborts with a
 * message: such code would hang or be undefined on a GPU too. Atomics are plain read-modify-writes (one fiber runs
 * at a time). Dynamic shared memory starts as 0xFF bytes (NaN in float32 and float16), so reading a slot nothing
 * staged shows up as NaN in the output. __half is a software IEEE binary16 (round to nearest even).
 * Asynchronous copies (__pipeline_memcpy_async, zero fill included) complete immediately: plain copies.
 *
 * Memory trace: every access through __ldg, __stwb and __pipeline_memcpy_async to a registered global buffer is
 * recorded as (warp, call site, per-lane occurrence of that site): the lanes' k-th execution of one call site is
 * one warp request, as on the GPU when the warp is converged. Per request the 32-byte sectors it touches are
 * counted; per launch the unique sectors (the DRAM traffic with a perfect L2) and per block the unique sectors
 * (the traffic with no reuse between blocks). Loads and stores are not reordered or cached: only the addresses
 * count. Plain pointer dereferences (shared memory, registers) are not recorded.
 *
 * Not modelled: timing, memory ordering between blocks (blocks run in order, so a kernel that depends on another
 * block's writes could pass here and fail on a GPU), warp-level parallel semantics beyond the barriers above.
 */
#ifndef DEPRUNE_CUDA_ON_CPU_H
#define DEPRUNE_CUDA_ON_CPU_H

#if defined(__CUDACC__)
#error "cudaOnCpu.h is for host compilers only"
#endif

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <vector>

// The kernels' "#pragma unroll" is nvcc's; g++ would warn on each.
#pragma GCC diagnostic ignored "-Wunknown-pragmas"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static
#define DRDW_DYNAMIC_SHARED(name) unsigned char* const name = ::cudaemu::dynamicShared()

struct dim3
{
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1)
        : x(vx)
        , y(vy)
        , z(vz)
    {
    }
};

struct float2
{
    float x, y;
};
struct alignas(16) float4
{
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w)
{
    return float4{x, y, z, w};
}

//! IEEE binary16 in software: storage only, arithmetic through float like the kernels do.
struct __half
{
    uint16_t bits;
};
struct __half2
{
    __half x, y;
};

inline float __half2float(__half h)
{
    uint32_t const sign = static_cast<uint32_t>(h.bits & 0x8000U) << 16;
    uint32_t exponent = (h.bits >> 10) & 0x1FU;
    uint32_t mantissa = h.bits & 0x3FFU;
    uint32_t out;
    if (exponent == 0x1F)
    {
        out = sign | 0x7F800000U | (mantissa << 13);
    }
    else if (exponent != 0)
    {
        out = sign | ((exponent + 112) << 23) | (mantissa << 13);
    }
    else if (mantissa == 0)
    {
        out = sign;
    }
    else
    {
        exponent = 113;
        while ((mantissa & 0x400U) == 0)
        {
            mantissa <<= 1;
            --exponent;
        }
        out = sign | (exponent << 23) | ((mantissa & 0x3FFU) << 13);
    }
    float f;
    std::memcpy(&f, &out, sizeof(f));
    return f;
}

inline __half __float2half_rn(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    uint16_t const sign = static_cast<uint16_t>((u >> 16) & 0x8000U);
    uint32_t const absBits = u & 0x7FFFFFFFU;
    if (absBits >= 0x7F800000U) // inf or NaN
    {
        return __half{static_cast<uint16_t>(sign | 0x7C00U | (absBits > 0x7F800000U ? 0x200U : 0U))};
    }
    if (absBits >= 0x477FF000U) // rounds to >= 65520: overflow to inf
    {
        return __half{static_cast<uint16_t>(sign | 0x7C00U)};
    }
    if (absBits < 0x38800000U) // below the smallest normal half: subnormal or zero, round to nearest even
    {
        float const magnitude = std::fabs(f) * 16777216.0F; // / 2^-24, the subnormal step
        float const rounded = std::nearbyint(magnitude);    // default rounding mode: to nearest even
        return __half{static_cast<uint16_t>(sign | static_cast<uint16_t>(rounded))};
    }
    uint32_t const exponent = ((absBits >> 23) - 112) << 10;
    uint32_t const mantissa = (absBits >> 13) & 0x3FFU;
    uint32_t half = exponent | mantissa;
    uint32_t const rest = absBits & 0x1FFFU;
    if (rest > 0x1000U || (rest == 0x1000U && (half & 1U)))
    {
        ++half; // carries into the exponent correctly
    }
    return __half{static_cast<uint16_t>(sign | half)};
}

inline __half2 __floats2half2_rn(float a, float b)
{
    return __half2{__float2half_rn(a), __float2half_rn(b)};
}
inline float2 __half22float2(__half2 h)
{
    return float2{__half2float(h.x), __half2float(h.y)};
}
inline float __low2float(__half2 h)
{
    return __half2float(h.x);
}
inline float __high2float(__half2 h)
{
    return __half2float(h.y);
}

inline int min(int a, int b)
{
    return a < b ? a : b;
}
inline int max(int a, int b)
{
    return a > b ? a : b;
}
inline float fminf(float a, float b)
{
    return std::fmin(a, b);
}
inline float fmaxf(float a, float b)
{
    return std::fmax(a, b);
}

constexpr int warpSize = 32;

namespace cudaemu
{

//! One recorded global buffer: accesses outside every registered buffer are an error (out of bounds).
struct Buffer
{
    uintptr_t begin, end;
    std::string name;
};

//! Per-buffer traffic of one launch.
struct Traffic
{
    uint64_t requests{0};        //!< warp requests (grouped as described at the top)
    uint64_t bytes{0};           //!< bytes the lanes asked for
    uint64_t sectors{0};         //!< sum over requests of the distinct 32-byte sectors each touches
    uint64_t blockSectors{0};    //!< sum over blocks of the distinct sectors each block touches
    std::unordered_set<uintptr_t> uniqueSectors; //!< distinct sectors of the whole launch
    uint64_t maxRequestBytesPerWarp{0};          //!< largest single request (bytes) seen
};

struct Recorder
{
    std::vector<Buffer> buffers;
    std::vector<Traffic> loads, stores;
    bool enabled{true};

    void registerBuffer(void const* p, size_t bytes, std::string name)
    {
        auto const b = reinterpret_cast<uintptr_t>(p);
        buffers.push_back(Buffer{b, b + bytes, std::move(name)});
        loads.emplace_back();
        stores.emplace_back();
    }
    int find(uintptr_t address, size_t bytes) const
    {
        for (size_t i = 0; i < buffers.size(); ++i)
        {
            if (address >= buffers[i].begin && address + bytes <= buffers[i].end)
            {
                return static_cast<int>(i);
            }
        }
        return -1;
    }
};

enum class FiberState
{
    kRunnable,
    kBlockBarrier,
    kWarpBarrier,
    kDone
};

struct Fiber
{
    ucontext_t context;
    dim3 threadIdx;
    int linear{0};
    FiberState state{FiberState::kRunnable};
    std::unordered_map<uint64_t, uint32_t> siteCount; //!< per call site: how often this lane executed it
};

//! A warp request in progress: the addresses of its lanes, keyed by (warp, site, occurrence).
struct Request
{
    int buffer{-1};
    bool store{false};
    uint64_t bytes{0};
    std::set<uintptr_t> sectors;
};

struct Emulator
{
    ucontext_t scheduler;
    std::vector<Fiber> fibers;
    std::vector<std::vector<char>> stacks;
    std::vector<unsigned char> sharedMemory;
    std::vector<unsigned char> warpSlots; //!< 32 lanes x 8 bytes per warp
    Fiber* current{nullptr};
    dim3 blockIdx, blockDim, gridDim;
    std::function<void()> body;
    Recorder* recorder{nullptr};
    std::map<std::tuple<int, uint64_t, uint32_t>, Request> requests; //!< this block's requests
    std::vector<std::unordered_set<uintptr_t>> blockSectors;       //!< per buffer, this block
    std::string error;
};

inline Emulator& emulator()
{
    static Emulator instance;
    return instance;
}

inline Fiber& self()
{
    return *emulator().current;
}

inline unsigned char* dynamicShared()
{
    return emulator().sharedMemory.data();
}

[[noreturn]] inline void die(std::string const& message)
{
    std::fprintf(stderr, "cudaOnCpu: %s\n", message.c_str());
    std::exit(3);
}

inline void yieldAs(FiberState state)
{
    Emulator& e = emulator();
    Fiber& f = *e.current;
    f.state = state;
    swapcontext(&f.context, &e.scheduler);
}

inline int laneId()
{
    return self().linear & 31;
}

//! Record one lane's access of `bytes` at `p` from call site `site`.
inline void record(void const* p, size_t bytes, bool store, uint64_t site)
{
    Emulator& e = emulator();
    if (e.recorder == nullptr)
    {
        return;
    }
    auto const address = reinterpret_cast<uintptr_t>(p);
    int const buffer = e.recorder->find(address, bytes);
    if (buffer < 0)
    {
        char text[200];
        std::snprintf(text, sizeof(text),
            "%s of %zu bytes at %p outside every registered global buffer (block %u,%u,%u thread %d)",
            store ? "store" : "load", bytes, p, e.blockIdx.x, e.blockIdx.y, e.blockIdx.z, self().linear);
        die(text);
    }
    Fiber& f = self();
    uint64_t const key = site * 2 + (store ? 1 : 0);
    uint32_t const occurrence = f.siteCount[key]++;
    Request& r = e.requests[std::make_tuple(f.linear >> 5, key, occurrence)];
    r.buffer = buffer;
    r.store = store;
    r.bytes += bytes;
    // Sectors counted from the buffer's start (cudaMalloc aligns to 256 bytes; a std::vector only to 16), tagged
    // with the buffer number in the top bits.
    uintptr_t const offset = address - e.recorder->buffers[static_cast<size_t>(buffer)].begin;
    uintptr_t const tag = static_cast<uintptr_t>(buffer) << 48;
    for (uintptr_t s = tag + offset / 32; s <= tag + (offset + bytes - 1) / 32; ++s)
    {
        r.sectors.insert(s);
        e.blockSectors[static_cast<size_t>(buffer) * 2 + (store ? 1 : 0)].insert(s);
    }
}

inline void flushBlockTraffic()
{
    Emulator& e = emulator();
    if (e.recorder == nullptr)
    {
        return;
    }
    for (auto const& item : e.requests)
    {
        Request const& r = item.second;
        auto const index = static_cast<size_t>(r.buffer);
        Traffic& t = r.store ? e.recorder->stores[index] : e.recorder->loads[index];
        t.requests += 1;
        t.bytes += r.bytes;
        t.sectors += r.sectors.size();
        t.maxRequestBytesPerWarp = std::max<uint64_t>(t.maxRequestBytesPerWarp, r.bytes);
    }
    for (size_t i = 0; i < e.blockSectors.size(); ++i)
    {
        Traffic& t = (i & 1) ? e.recorder->stores[i / 2] : e.recorder->loads[i / 2];
        t.blockSectors += e.blockSectors[i].size();
        t.uniqueSectors.insert(e.blockSectors[i].begin(), e.blockSectors[i].end());
        e.blockSectors[i].clear();
    }
    e.requests.clear();
}

inline void fiberEntry()
{
    Emulator& e = emulator();
    e.body();
    e.current->state = FiberState::kDone;
    swapcontext(&e.current->context, &e.scheduler);
}

//! Run one block of `threads` threads executing `body` to completion (see the model at the top).
inline void runBlock(dim3 block, dim3 blockDimension, dim3 grid, size_t sharedBytes, std::function<void()> body)
{
    Emulator& e = emulator();
    int const threads = static_cast<int>(blockDimension.x * blockDimension.y * blockDimension.z);
    constexpr size_t kStack = 128 * 1024;
    if (e.stacks.size() < static_cast<size_t>(threads))
    {
        e.stacks.resize(static_cast<size_t>(threads), std::vector<char>(kStack));
    }
    e.sharedMemory.assign(std::max<size_t>(sharedBytes, 16), 0xFF);
    e.warpSlots.assign(static_cast<size_t>((threads + 31) / 32) * 32 * 8, 0);
    e.blockIdx = block;
    e.blockDim = blockDimension;
    e.gridDim = grid;
    e.body = std::move(body);
    if (e.recorder != nullptr)
    {
        e.blockSectors.assign(e.recorder->buffers.size() * 2, {});
    }
    e.fibers.assign(static_cast<size_t>(threads), Fiber{});
    for (int t = 0; t < threads; ++t)
    {
        Fiber& f = e.fibers[static_cast<size_t>(t)];
        f.linear = t;
        f.threadIdx = dim3(static_cast<unsigned>(t) % blockDimension.x,
            (static_cast<unsigned>(t) / blockDimension.x) % blockDimension.y,
            static_cast<unsigned>(t) / (blockDimension.x * blockDimension.y));
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = e.stacks[static_cast<size_t>(t)].data();
        f.context.uc_stack.ss_size = kStack;
        f.context.uc_link = nullptr;
        makecontext(&f.context, fiberEntry, 0);
    }
    for (;;)
    {
        bool ran = false;
        for (Fiber& f : e.fibers)
        {
            if (f.state == FiberState::kRunnable)
            {
                e.current = &f;
                swapcontext(&e.scheduler, &f.context);
                ran = true;
            }
        }
        e.current = nullptr;
        int alive = 0, atBlock = 0;
        for (Fiber const& f : e.fibers)
        {
            alive += f.state != FiberState::kDone;
            atBlock += f.state == FiberState::kBlockBarrier;
        }
        if (alive == 0)
        {
            break;
        }
        bool released = false;
        if (atBlock == alive)
        {
            for (Fiber& f : e.fibers)
            {
                if (f.state == FiberState::kBlockBarrier)
                {
                    f.state = FiberState::kRunnable;
                }
            }
            released = true;
        }
        for (int w = 0; w * 32 < threads; ++w)
        {
            int waiting = 0, live = 0;
            for (int l = w * 32; l < std::min(threads, w * 32 + 32); ++l)
            {
                FiberState const s = e.fibers[static_cast<size_t>(l)].state;
                live += s != FiberState::kDone;
                waiting += s == FiberState::kWarpBarrier;
            }
            if (waiting > 0 && waiting == live)
            {
                for (int l = w * 32; l < std::min(threads, w * 32 + 32); ++l)
                {
                    if (e.fibers[static_cast<size_t>(l)].state == FiberState::kWarpBarrier)
                    {
                        e.fibers[static_cast<size_t>(l)].state = FiberState::kRunnable;
                    }
                }
                released = true;
            }
        }
        if (!ran && !released)
        {
            char text[160];
            std::snprintf(text, sizeof(text),
                "deadlock in block (%u,%u,%u): %d threads alive, %d at __syncthreads, the rest at warp barriers of "
                "partly exited or divergent warps",
                block.x, block.y, block.z, alive, atBlock);
            die(text);
        }
    }
    flushBlockTraffic();
}

//! Launch `kernel(args...)` over `grid` x `block` with `sharedBytes` of dynamic shared memory, block by block.
template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, size_t sharedBytes, Kernel kernel, Args... args)
{
    for (unsigned z = 0; z < grid.z; ++z)
    {
        for (unsigned y = 0; y < grid.y; ++y)
        {
            for (unsigned x = 0; x < grid.x; ++x)
            {
                runBlock(dim3(x, y, z), block, grid, sharedBytes, [&]() { kernel(args...); });
            }
        }
    }
}

//! Exchange a value among the lanes of the calling warp: every live lane must call it (warp-synchronous).
template <typename T>
T exchange(T value, int sourceLane)
{
    static_assert(sizeof(T) <= 8, "warp exchange of at most 8 bytes");
    Emulator& e = emulator();
    int const warp = self().linear >> 5;
    unsigned char* slots = e.warpSlots.data() + static_cast<size_t>(warp) * 32 * 8;
    std::memcpy(slots + laneId() * 8, &value, sizeof(T));
    yieldAs(FiberState::kWarpBarrier);
    T out;
    std::memcpy(&out, slots + (sourceLane & 31) * 8, sizeof(T));
    yieldAs(FiberState::kWarpBarrier);
    return out;
}

//! The bit mask of the warp's live lanes whose `predicate` is true (every live lane must call it).
inline unsigned ballot(bool predicate)
{
    Emulator& e = emulator();
    int const warp = self().linear >> 5;
    unsigned char* slots = e.warpSlots.data() + static_cast<size_t>(warp) * 32 * 8;
    int const threads = static_cast<int>(e.fibers.size());
    slots[laneId() * 8] = predicate ? 1 : 0;
    yieldAs(FiberState::kWarpBarrier);
    unsigned bits = 0;
    for (int l = 0; l < 32 && warp * 32 + l < threads; ++l)
    {
        bool const live = e.fibers[static_cast<size_t>(warp * 32 + l)].state != FiberState::kDone;
        bits |= (live && slots[l * 8] != 0 ? 1U : 0U) << l;
    }
    yieldAs(FiberState::kWarpBarrier);
    return bits;
}

} // namespace cudaemu

#define threadIdx (::cudaemu::self().threadIdx)
#define blockIdx (::cudaemu::emulator().blockIdx)
#define blockDim (::cudaemu::emulator().blockDim)
#define gridDim (::cudaemu::emulator().gridDim)

inline void __syncthreads()
{
    cudaemu::yieldAs(cudaemu::FiberState::kBlockBarrier);
}
inline void __syncwarp(unsigned = 0xFFFFFFFFU)
{
    cudaemu::yieldAs(cudaemu::FiberState::kWarpBarrier);
}

template <typename T>
T __shfl_sync(unsigned, T value, int sourceLane, int width = 32)
{
    int const lane = cudaemu::laneId();
    return cudaemu::exchange(value, (lane & ~(width - 1)) + (sourceLane & (width - 1)));
}
template <typename T>
T __shfl_down_sync(unsigned, T value, unsigned delta, int width = 32)
{
    int const lane = cudaemu::laneId();
    int const within = (lane & (width - 1)) + static_cast<int>(delta);
    return cudaemu::exchange(value, within < width ? lane + static_cast<int>(delta) : lane);
}
template <typename T>
T __shfl_up_sync(unsigned, T value, unsigned delta, int width = 32)
{
    int const lane = cudaemu::laneId();
    int const within = (lane & (width - 1)) - static_cast<int>(delta);
    return cudaemu::exchange(value, within >= 0 ? lane - static_cast<int>(delta) : lane);
}
template <typename T>
T __shfl_xor_sync(unsigned, T value, int laneMask, int width = 32)
{
    int const lane = cudaemu::laneId();
    int const partner = lane ^ laneMask;
    return cudaemu::exchange(value, (partner & ~(width - 1)) == (lane & ~(width - 1)) ? partner : lane);
}
inline unsigned __ballot_sync(unsigned, int predicate)
{
    return cudaemu::ballot(predicate != 0);
}
inline int __any_sync(unsigned mask, int predicate)
{
    return __ballot_sync(mask, predicate) != 0;
}
inline int __all_sync(unsigned mask, int predicate)
{
    return __ballot_sync(mask, !predicate) == 0;
}

template <typename T>
T atomicMin(T* address, T value)
{
    T const old = *address;
    *address = value < old ? value : old;
    return old;
}
template <typename T>
T atomicMax(T* address, T value)
{
    T const old = *address;
    *address = value > old ? value : old;
    return old;
}
template <typename T>
T atomicAdd(T* address, T value)
{
    T const old = *address;
    *address = old + value;
    return old;
}
template <typename T>
T atomicOr(T* address, T value)
{
    T const old = *address;
    *address = old | value;
    return old;
}

//! Read-only global load (recorded).
template <typename T>
T __ldg(T const* p, uint64_t site = __builtin_LINE())
{
    cudaemu::record(p, sizeof(T), false, site);
    return *p;
}
//! Global store, write-back (recorded).
template <typename T>
void __stwb(T* p, T value, uint64_t site = __builtin_LINE())
{
    cudaemu::record(p, sizeof(T), true, site);
    *p = value;
}

//! cuda_pipeline_primitives.h: an asynchronous copy of 4, 8 or 16 bytes global -> shared, the last `zeroFill`
//! bytes zero instead of read (all of them: nothing is read). Completes at once here.
inline void __pipeline_memcpy_async(void* sharedDst, void const* globalSrc, size_t bytes, size_t zeroFill = 0,
    uint64_t site = __builtin_LINE())
{
    size_t const read = bytes - zeroFill;
    if (read > 0)
    {
        cudaemu::record(globalSrc, read, false, site);
        std::memcpy(sharedDst, globalSrc, read);
    }
    std::memset(static_cast<unsigned char*>(sharedDst) + read, 0, zeroFill);
}
inline void __pipeline_commit() {}
inline void __pipeline_wait_prior(size_t) {}

#endif // DEPRUNE_CUDA_ON_CPU_H
