// The CUDA driver API that cudarc and condlm call (libcuda.so), on the CPU: one device, "cuda:0"; device memory is
// host memory that ends at a PROT_NONE page (reading or writing past an allocation's end faults, and threads.cpp
// names the kernel and thread); everything runs at once in call order, so streams and events have nothing to wait
// for — except while a stream is captured into a graph (CUDA graphs): then its work is kept, and runs at each replay
// of the graph. A module is a kernel program compiled into the emulator (nvrtc.cpp hands its file name over as the
// "PTX").
#include "runtime.h"
#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <sys/mman.h>
#include <thread>
#include <unistd.h>

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;
using Handle = void*;

namespace {
constexpr CUresult kSuccess = 0, kInvalidValue = 1, kOutOfMemory = 2, kNoBinaryForGpu = 209, kInvalidImage = 200,
                   kInvalidDevice = 101, kInvalidHandle = 400, kNotFound = 500, kLaunchFailed = 719,
                   kNotSupported = 801, kCaptureUnsupported = 900, kCaptureInvalidated = 901,
                   kIllegalState = 401, kUnsupportedPtxVersion = 222;
// What the emulated GPU says it has: 16 GiB, or CUDA_EMULATOR_MEMORY bytes (a test of what a run does when the
// device's memory runs out).
const size_t kMemory = [] {
    const char* v = getenv("CUDA_EMULATOR_MEMORY");
    return v ? size_t(strtoull(v, nullptr, 10)) : size_t(16) << 30;
}();

std::recursive_mutex& lock = emu::driver_lock();
struct Allocation {
    char* mapping;
    size_t len, bytes;
};
std::map<CUdeviceptr, Allocation> allocations;
size_t in_use = 0;
int context_tag;  // the address that stands for the one context

// An event: when it was last recorded. Work runs when it is queued here, so that is when the stream reached it.
struct Event {
    std::chrono::steady_clock::time_point at{};
};

// A graph: the work captured from a stream, in order (each op returns a CUresult).
using Ops = std::vector<std::function<int()>>;
struct Capture {
    Ops ops;
    bool invalid = false;  // a call CUDA refuses during capture was made: ending the capture fails
};
std::map<Handle, Capture> captures;  // streams being captured (cuStreamBeginCapture to cuStreamEndCapture)
std::map<Handle, std::unique_ptr<int>> streams;  // streams made by cuStreamCreate (their handles point at these)

size_t page() { return size_t(sysconf(_SC_PAGESIZE)); }

// `bytes` that end where a PROT_NONE page starts (and start after another), aligned to 4 bytes (8 when `bytes` is
// a multiple of 8: every f64 and u64 buffer). Filled with 0xff bytes — NaN as f32 and bf16 — because a GPU's fresh
// memory holds whatever was there before: a value read before anything wrote it then shows as NaN, not as zero.
CUdeviceptr allocate(size_t bytes) {
    const size_t p = page(), rounded = (bytes + 3) & ~size_t(3), body = (rounded + p - 1) / p * p;
    const size_t len = body + 2 * p;
    void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 0;
    char* base = static_cast<char*>(m);
    mprotect(base, p, PROT_NONE);
    mprotect(base + p + body, p, PROT_NONE);
    const auto ptr = CUdeviceptr(base + p + body - rounded);
    memset(reinterpret_cast<void*>(ptr), 0xff, bytes);
    allocations[ptr] = {base, len, bytes};
    in_use += bytes;
    emu::high_water("peak bytes in use", in_use);
    return ptr;
}

const char* error_name(CUresult r) {
    switch (r) {
        case kSuccess: return "CUDA_SUCCESS";
        case kInvalidValue: return "CUDA_ERROR_INVALID_VALUE";
        case kOutOfMemory: return "CUDA_ERROR_OUT_OF_MEMORY";
        case kInvalidDevice: return "CUDA_ERROR_INVALID_DEVICE";
        case kInvalidImage: return "CUDA_ERROR_INVALID_IMAGE";
        case kNoBinaryForGpu: return "CUDA_ERROR_NO_BINARY_FOR_GPU";
        case kUnsupportedPtxVersion: return "CUDA_ERROR_UNSUPPORTED_PTX_VERSION";
        case kInvalidHandle: return "CUDA_ERROR_INVALID_HANDLE";
        case kNotFound: return "CUDA_ERROR_NOT_FOUND";
        case kLaunchFailed: return "CUDA_ERROR_LAUNCH_FAILED";
        case kCaptureUnsupported: return "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED";
        case kCaptureInvalidated: return "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED";
        case kIllegalState: return "CUDA_ERROR_ILLEGAL_STATE";
        default: return "CUDA_ERROR_NOT_SUPPORTED";
    }
}
std::string grid_text(const char* what, unsigned x, unsigned y, unsigned z) {
    return std::string(what) + " (" + std::to_string(x) + ", " + std::to_string(y) + ", " + std::to_string(z) + ")";
}
}  // namespace

namespace emu {
std::recursive_mutex& driver_lock() {
    static std::recursive_mutex m;
    return m;
}

// CUDA_EMULATOR_FAIL_CAPTURE=N: the N-th piece of work captured (1-based) is refused as CUDA refuses an
// unsupported call during a capture — how condlm's way out of a failed capture is tested.
const long fail_capture_at = [] {
    const char* v = getenv("CUDA_EMULATOR_FAIL_CAPTURE");
    return v ? atol(v) : 0L;
}();
long captured = 0;

int submit(void* stream, const std::string& what, std::function<int()> op) {
    auto c = captures.find(stream);
    if (c == captures.end()) {
        count(what);
        return op();
    }
    if (++captured == fail_capture_at) return refused_in_capture(("(CUDA_EMULATOR_FAIL_CAPTURE) " + what).c_str());
    count("captured " + what);
    c->second.ops.push_back(std::move(op));
    return kSuccess;
}

int refused_in_capture(const char* call) {
    if (captures.empty()) return kSuccess;
    for (auto& [stream, c] : captures) c.invalid = true;
    complain(std::string(call) + " while a stream is captured into a graph: CUDA refuses it " +
             "(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED) and the capture is invalidated");
    return kCaptureUnsupported;
}
}  // namespace emu

extern "C" {
CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return kSuccess;
}
CUresult cuInit(unsigned) { return kSuccess; }
CUresult cuGetErrorName(CUresult r, const char** s) {
    *s = error_name(r);
    return kSuccess;
}
CUresult cuGetErrorString(CUresult r, const char** s) {
    *s = error_name(r);
    return kSuccess;
}

CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return kSuccess;
}
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return kInvalidDevice;
    *d = 0;
    return kSuccess;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, size_t(len), "condlm CUDA emulator (CPU)");
    return kSuccess;
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    *bytes = kMemory;
    return kSuccess;
}
// Compute capability 9.0 (the H200's), one multiprocessor, memory pools (cudarc then allocates and frees in stream
// order, cuMemAllocAsync and cuMemFreeAsync, as on the H200).
CUresult cuDeviceGetAttribute(int* v, int attribute, CUdevice) {
    switch (attribute) {
        case 75: *v = 9; break;   // COMPUTE_CAPABILITY_MAJOR
        case 76: *v = 0; break;   // COMPUTE_CAPABILITY_MINOR
        case 16: *v = 1; break;   // MULTIPROCESSOR_COUNT
        case 115: *v = 1; break;  // MEMORY_POOLS_SUPPORTED
        default: *v = 0;
    }
    return kSuccess;
}

CUresult cuDevicePrimaryCtxRetain(Handle* ctx, CUdevice) {
    *ctx = &context_tag;
    return kSuccess;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return kSuccess; }
CUresult cuCtxSetCurrent(Handle) { return kSuccess; }
CUresult cuCtxGetCurrent(Handle* ctx) {
    *ctx = &context_tag;
    return kSuccess;
}
CUresult cuMemGetInfo_v2(size_t* free, size_t* total) {
    std::lock_guard<std::recursive_mutex> g(lock);
    *total = kMemory;
    *free = kMemory > in_use ? kMemory - in_use : 0;
    return kSuccess;
}

// CUDA_EMULATOR_SYNC_MS=N: each synchronize takes N ms, as on a GPU still busy with the work queued before (here
// it ran at once): what a host's measured wait for the device sees.
const int sync_ms = [] {
    const char* v = getenv("CUDA_EMULATOR_SYNC_MS");
    return v ? atoi(v) : 0;
}();

CUresult cuStreamSynchronize(Handle) {
    {
        std::lock_guard<std::recursive_mutex> g(lock);
        if (CUresult r = emu::refused_in_capture("cuStreamSynchronize")) return r;
        emu::count("synchronize");
    }
    // Outside the lock: a busy GPU keeps other threads' calls going.
    if (sync_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(sync_ms));
    return kSuccess;
}
CUresult cuEventCreate(Handle* e, unsigned) {
    *e = new Event;
    return kSuccess;
}
CUresult cuEventDestroy_v2(Handle e) {
    delete static_cast<Event*>(e);
    return kSuccess;
}
// Recorded when queued (the stream's work before it has run). Not in a capture: condlm records none there.
CUresult cuEventRecord(Handle e, Handle s) {
    std::lock_guard<std::recursive_mutex> g(lock);
    if (captures.count(s)) return kIllegalState;
    static_cast<Event*>(e)->at = std::chrono::steady_clock::now();
    return kSuccess;
}
CUresult cuEventSynchronize(Handle) { return kSuccess; }
CUresult cuEventElapsedTime_v2(float* ms, Handle start, Handle end) {
    const auto d = static_cast<Event*>(end)->at - static_cast<Event*>(start)->at;
    *ms = std::chrono::duration<float, std::milli>(d).count();
    return kSuccess;
}
CUresult cuEventElapsedTime(float* ms, Handle start, Handle end) { return cuEventElapsedTime_v2(ms, start, end); }

// Allocations and frees, synchronous or in stream order (at once here), are refused during a capture. CUDA refuses
// the synchronous ones and a free of memory the graph did not allocate; it records a stream-ordered allocation as
// the graph's own, which condlm's graphs never make (they name buffers made before), so here that is refused too.
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    std::lock_guard<std::recursive_mutex> g(lock);
    if (CUresult r = emu::refused_in_capture("cuMemAlloc")) return r;
    emu::count("allocate");
    if (bytes == 0) return kInvalidValue;
    if (in_use + bytes > kMemory || !(*p = allocate(bytes))) return kOutOfMemory;
    return kSuccess;
}
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, Handle) {
    std::lock_guard<std::recursive_mutex> g(lock);
    if (CUresult r = emu::refused_in_capture("cuMemAllocAsync")) return r;
    return cuMemAlloc_v2(p, bytes);
}
CUresult cuMemFreeAsync(CUdeviceptr p, Handle);
CUresult cuMemFree_v2(CUdeviceptr p) { return cuMemFreeAsync(p, nullptr); }
CUresult cuMemFreeAsync(CUdeviceptr p, Handle) {
    std::lock_guard<std::recursive_mutex> g(lock);
    if (CUresult r = emu::refused_in_capture("cuMemFree")) return r;
    auto it = allocations.find(p);
    if (it == allocations.end()) return kInvalidValue;
    munmap(it->second.mapping, it->second.len);
    in_use -= it->second.bytes;
    allocations.erase(it);
    return kSuccess;
}

// Copies between host and device memory are refused during a capture: the host memory they name is pageable, and a
// graph cannot hold such a copy.
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, Handle) {
    std::lock_guard<std::recursive_mutex> g(lock);
    if (CUresult r = emu::refused_in_capture("cuMemcpyHtoDAsync")) return r;
    emu::count("copy host to device");
    memcpy(reinterpret_cast<void*>(dst), src, n);
    return kSuccess;
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, Handle) {
    std::lock_guard<std::recursive_mutex> g(lock);
    if (CUresult r = emu::refused_in_capture("cuMemcpyDtoHAsync")) return r;
    emu::count("copy device to host");
    memcpy(dst, reinterpret_cast<const void*>(src), n);
    return kSuccess;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, Handle s) {
    std::lock_guard<std::recursive_mutex> g(lock);
    return emu::submit(s, "copy device to device", [=] {
        memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
        return kSuccess;
    });
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, Handle s) {
    std::lock_guard<std::recursive_mutex> g(lock);
    return emu::submit(s, "memset", [=] {
        memset(reinterpret_cast<void*>(dst), v, n);
        return kSuccess;
    });
}
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, Handle s) {
    std::lock_guard<std::recursive_mutex> g(lock);
    return emu::submit(s, "memset", [=] {
        auto* d = reinterpret_cast<unsigned*>(dst);
        for (size_t i = 0; i < n; ++i) d[i] = v;
        return kSuccess;
    });
}
extern "C++" {
// `height` rows of `width` values of type T (32- or 16-bit), `pitch` bytes apart.
template <typename T>
CUresult memset_2d(CUdeviceptr dst, size_t pitch, T v, size_t width, size_t height, Handle s) {
    std::lock_guard<std::recursive_mutex> g(lock);
    if (pitch < width * sizeof(T)) return kInvalidValue;
    return emu::submit(s, "memset", [=] {
        for (size_t r = 0; r < height; ++r) {
            auto* d = reinterpret_cast<T*>(dst + r * pitch);
            for (size_t i = 0; i < width; ++i) d[i] = v;
        }
        return kSuccess;
    });
}
}
CUresult cuMemsetD2D32Async(CUdeviceptr dst, size_t pitch, unsigned v, size_t width, size_t height, Handle s) {
    return memset_2d<uint32_t>(dst, pitch, v, width, height, s);
}
CUresult cuMemsetD2D16Async(CUdeviceptr dst, size_t pitch, unsigned short v, size_t width, size_t height, Handle s) {
    return memset_2d<uint16_t>(dst, pitch, v, width, height, s);
}

// CUDA_EMULATOR_OLD_DRIVER=1: PTX is refused as a driver older than NVRTC refuses a PTX version it does not know
// (machine code is loaded) — how condlm's way around that is tested.
const bool old_driver = getenv("CUDA_EMULATOR_OLD_DRIVER") != nullptr;

// The "PTX" is "condlm CUDA emulator: FILE", the "CUBIN" the same after "cubin " (nvrtc.cpp); the module is that
// program.
CUresult cuModuleLoadData(Handle* module, const void* image) {
    static const std::string prefix = "condlm CUDA emulator: ";
    std::string text = static_cast<const char*>(image);
    const bool cubin = text.rfind("cubin ", 0) == 0;
    if (cubin) text = text.substr(6);
    if (!cubin && old_driver) return kUnsupportedPtxVersion;
    if (text.rfind(prefix, 0) != 0) {
        emu::complain("cuModuleLoadData got PTX that the emulator's NVRTC did not make");
        return kInvalidImage;
    }
    for (const auto& p : emu::programs())
        if (text.substr(prefix.size()) == p.file) {
            *module = const_cast<emu::Program*>(&p);
            return kSuccess;
        }
    return kNoBinaryForGpu;
}
CUresult cuModuleUnload(Handle) { return kSuccess; }
CUresult cuModuleGetFunction(Handle* f, Handle module, const char* name) {
    auto* p = static_cast<emu::Program*>(module);
    for (auto& k : p->kernels)
        if (std::string(k.name) == name) {
            *f = &k;
            return kSuccess;
        }
    return kNotFound;
}

CUresult cuLaunchKernel(Handle f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared_bytes, Handle stream, void** params, void** extra) {
    std::lock_guard<std::recursive_mutex> g(lock);
    auto* k = static_cast<emu::Kernel*>(f);
    if (shared_bytes != 0 || extra != nullptr) {
        emu::complain(std::string("kernel ") + k->name + ": dynamic shared memory and `extra` are not emulated");
        return kNotSupported;
    }
    // The argument values are copied now, as CUDA does: a captured launch runs later, on these values.
    auto args = std::make_shared<emu::ArgBytes>(k->copy_args(params));
    const dim3 grid{gx, gy, gz}, block{bx, by, bz};
    return emu::submit(stream, std::string("launch ") + k->name, [=] {
        std::vector<void*> ptrs;
        for (auto& a : *args) ptrs.push_back(a.data());
        const std::string err = emu::launch(*k, grid, block, ptrs.data());
        if (err.empty()) return kSuccess;
        emu::complain(std::string("kernel ") + k->name + ", " + grid_text("grid", gx, gy, gz) + ", " +
                      grid_text("block", bx, by, bz) + ": " + err);
        return kLaunchFailed;
    });
}

// Streams and CUDA graphs. The null (legacy) stream cannot be captured, as in CUDA.
CUresult cuStreamCreate(Handle* s, unsigned) {
    std::lock_guard<std::recursive_mutex> g(lock);
    auto tag = std::make_unique<int>(0);
    *s = tag.get();
    streams[*s] = std::move(tag);
    return kSuccess;
}
CUresult cuStreamDestroy_v2(Handle s) {
    std::lock_guard<std::recursive_mutex> g(lock);
    if (captures.count(s)) return kIllegalState;
    return streams.erase(s) ? kSuccess : kInvalidHandle;
}
CUresult cuStreamBeginCapture_v2(Handle s, int) {
    std::lock_guard<std::recursive_mutex> g(lock);
    if (!streams.count(s)) {
        emu::complain("cuStreamBeginCapture on the legacy null stream (or an unknown one): CUDA refuses it");
        return kCaptureUnsupported;
    }
    if (captures.count(s)) return kIllegalState;
    captures[s];
    return kSuccess;
}
CUresult cuStreamEndCapture(Handle s, Handle* graph) {
    std::lock_guard<std::recursive_mutex> g(lock);
    auto c = captures.find(s);
    *graph = nullptr;
    if (c == captures.end()) return kIllegalState;
    const bool invalid = c->second.invalid;
    if (!invalid) *graph = new Ops(std::move(c->second.ops));
    captures.erase(c);
    return invalid ? kCaptureInvalidated : kSuccess;
}
CUresult cuStreamIsCapturing(Handle s, int* status) {
    std::lock_guard<std::recursive_mutex> g(lock);
    auto c = captures.find(s);
    *status = c == captures.end() ? 0 : c->second.invalid ? 2 : 1;  // NONE, ACTIVE, INVALIDATED
    return kSuccess;
}
CUresult cuGraphInstantiateWithFlags(Handle* exec, Handle graph, unsigned long long) {
    *exec = new Ops(*static_cast<Ops*>(graph));
    return kSuccess;
}
CUresult cuGraphLaunch(Handle exec, Handle stream) {
    std::lock_guard<std::recursive_mutex> g(lock);
    const Ops& ops = *static_cast<Ops*>(exec);
    return emu::submit(stream, "graph launch", [&ops] {
        for (auto& op : ops)
            if (CUresult r = op()) return r;
        return kSuccess;
    });
}
CUresult cuGraphUpload(Handle, Handle) { return kSuccess; }
CUresult cuGraphExecDestroy(Handle exec) {
    delete static_cast<Ops*>(exec);
    return kSuccess;
}
CUresult cuGraphDestroy(Handle graph) {
    delete static_cast<Ops*>(graph);
    return kSuccess;
}
}
