// The CUDA driver API that cudarc and condlm call (libcuda.so), on the CPU: one device, "cuda:0"; device memory is
// host memory that ends at a PROT_NONE page (reading or writing past an allocation's end faults, and threads.cpp
// names the kernel and thread); everything runs at once in call order, so streams and events have nothing to wait
// for. A module is a kernel program compiled into the emulator (nvrtc.cpp hands its file name over as the "PTX").
#include "runtime.h"
#include <cstdlib>
#include <map>
#include <mutex>
#include <sys/mman.h>
#include <unistd.h>

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;
using Handle = void*;

namespace {
constexpr CUresult kSuccess = 0, kInvalidValue = 1, kOutOfMemory = 2, kNoBinaryForGpu = 209, kInvalidImage = 200,
                   kInvalidDevice = 101, kInvalidHandle = 400, kNotFound = 500, kLaunchFailed = 719,
                   kNotSupported = 801;
constexpr size_t kMemory = size_t(16) << 30;  // what the emulated GPU says it has

std::mutex lock;  // cudarc may call from several threads; the emulator runs one call at a time
struct Allocation {
    char* mapping;
    size_t len, bytes;
};
std::map<CUdeviceptr, Allocation> allocations;
size_t in_use = 0;
int context_tag, event_tag;  // addresses that stand for the one context and its events

size_t page() { return size_t(sysconf(_SC_PAGESIZE)); }

// `bytes` that end where a PROT_NONE page starts (and start after another), aligned to 4 bytes (8 when `bytes` is
// a multiple of 8: every f64 and u64 buffer).
CUdeviceptr allocate(size_t bytes) {
    const size_t p = page(), rounded = (bytes + 3) & ~size_t(3), body = (rounded + p - 1) / p * p;
    const size_t len = body + 2 * p;
    void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 0;
    char* base = static_cast<char*>(m);
    mprotect(base, p, PROT_NONE);
    mprotect(base + p + body, p, PROT_NONE);
    const auto ptr = CUdeviceptr(base + p + body - rounded);
    allocations[ptr] = {base, len, bytes};
    in_use += bytes;
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
        case kInvalidHandle: return "CUDA_ERROR_INVALID_HANDLE";
        case kNotFound: return "CUDA_ERROR_NOT_FOUND";
        case kLaunchFailed: return "CUDA_ERROR_LAUNCH_FAILED";
        default: return "CUDA_ERROR_NOT_SUPPORTED";
    }
}
}  // namespace

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
// Compute capability 9.0 (the H200's), one multiprocessor, no memory pools (cudarc then allocates synchronously).
CUresult cuDeviceGetAttribute(int* v, int attribute, CUdevice) {
    switch (attribute) {
        case 75: *v = 9; break;   // COMPUTE_CAPABILITY_MAJOR
        case 76: *v = 0; break;   // COMPUTE_CAPABILITY_MINOR
        case 16: *v = 1; break;   // MULTIPROCESSOR_COUNT
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
    std::lock_guard<std::mutex> g(lock);
    *total = kMemory;
    *free = kMemory > in_use ? kMemory - in_use : 0;
    return kSuccess;
}

CUresult cuStreamSynchronize(Handle) {
    emu::count("synchronize");
    return kSuccess;
}
CUresult cuEventCreate(Handle* e, unsigned) {
    *e = &event_tag;
    return kSuccess;
}
CUresult cuEventDestroy_v2(Handle) { return kSuccess; }

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    std::lock_guard<std::mutex> g(lock);
    emu::count("allocate");
    if (bytes == 0) return kInvalidValue;
    if (in_use + bytes > kMemory || !(*p = allocate(bytes))) return kOutOfMemory;
    return kSuccess;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
    std::lock_guard<std::mutex> g(lock);
    auto it = allocations.find(p);
    if (it == allocations.end()) return kInvalidValue;
    munmap(it->second.mapping, it->second.len);
    in_use -= it->second.bytes;
    allocations.erase(it);
    return kSuccess;
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, Handle) {
    emu::count("copy host to device");
    memcpy(reinterpret_cast<void*>(dst), src, n);
    return kSuccess;
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, Handle) {
    emu::count("copy device to host");
    memcpy(dst, reinterpret_cast<const void*>(src), n);
    return kSuccess;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, Handle) {
    memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
    return kSuccess;
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, Handle) {
    memset(reinterpret_cast<void*>(dst), v, n);
    return kSuccess;
}
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, Handle) {
    auto* d = reinterpret_cast<unsigned*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = v;
    return kSuccess;
}
// `height` rows of `width` 32-bit values, `pitch` bytes apart.
CUresult cuMemsetD2D32Async(CUdeviceptr dst, size_t pitch, unsigned v, size_t width, size_t height, Handle) {
    if (pitch < width * 4) return kInvalidValue;
    for (size_t r = 0; r < height; ++r) cuMemsetD32Async(dst + r * pitch, v, width, nullptr);
    return kSuccess;
}

// The "PTX" is "condlm CUDA emulator: FILE" (nvrtc.cpp); the module is that program.
CUresult cuModuleLoadData(Handle* module, const void* image) {
    static const std::string prefix = "condlm CUDA emulator: ";
    const std::string text = static_cast<const char*>(image);
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
                        unsigned shared_bytes, Handle, void** params, void** extra) {
    std::lock_guard<std::mutex> g(lock);
    auto* k = static_cast<emu::Kernel*>(f);
    emu::count(std::string("launch ") + k->name);
    if (shared_bytes != 0 || extra != nullptr) {
        emu::complain(std::string("kernel ") + k->name + ": dynamic shared memory and `extra` are not emulated");
        return kNotSupported;
    }
    const std::string err = emu::launch(*k, {gx, gy, gz}, {bx, by, bz}, params);
    if (err.empty()) return kSuccess;
    emu::complain(std::string("kernel ") + k->name + ", grid (" + std::to_string(gx) + ", " + std::to_string(gy) +
                  ", " + std::to_string(gz) + "), block (" + std::to_string(bx) + ", " + std::to_string(by) + ", " +
                  std::to_string(bz) + "): " + err);
    return kLaunchFailed;
}
}
