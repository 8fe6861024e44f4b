// What the emulator's parts share: the kernel programs compiled into it (each registers itself when the library
// loads) and the launch of one kernel over a grid (threads.cpp).
#pragma once
#include "device.h"
#include <functional>
#include <mutex>
#include <string>
#include <vector>

namespace emu {
using Trampoline = void (*)(void** args);
using ArgCopier = ArgBytes (*)(void** args);

struct Kernel {
    const char* name;
    Trampoline run;
    ArgCopier copy_args;
};

// One kernel program (common.cuh + a .cu file, as src/kernels/cuda/sources.rs hands it to NVRTC) compiled into
// the emulator: its file name, its exact text (NVRTC's stand-in compiles only a text it was built from) and kernels.
struct Program {
    const char* file;
    const char* text;
    std::vector<Kernel> kernels;
};

// Registers a program: the generated file of each program holds one of these (tests/common/cuda_emulator.rs).
struct Registered {
    explicit Registered(Program p);
};

// Every registered program.
const std::vector<Program>& programs();

// Runs `k` over `grid` × `block` threads with the argument pointers of cuLaunchKernel. Returns an empty string, or
// what went wrong (a launch shape CUDA refuses, or threads that can never meet at a barrier).
std::string launch(const Kernel& k, dim3 grid, dim3 block, void** args);

// cudarc may call from several threads; the emulator runs one call at a time, holding this (recursive: a graph's
// replay runs calls' work inside cuGraphLaunch's hold).
std::recursive_mutex& driver_lock();

// Work queued on `stream` (a launch, a copy, a memset, a GEMM): run now, or — while the stream is being captured
// into a graph — kept in the capture to run at each replay, and counted as "captured " + `what` instead of `what`.
// Returns what `op` returned, or success when it was captured.
int submit(void* stream, const std::string& what, std::function<int()> op);

// A call CUDA refuses while this thread captures a stream (allocations, frees, synchronizes, copies to or from
// host memory): returns 0 when no capture is under way, else invalidates the capture (its end then fails, as
// CUDA's does), complains naming `call`, and returns CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED.
int refused_in_capture(const char* call);

// With CUDA_EMULATOR_STATS set, counts one `what` (a kernel launch, a GEMM, a copy, a synchronize); the counts go
// to stderr when the process exits — how many launches and host round trips a command makes, which a GPU pays
// for in launch latency and stalls whatever its kernels' speed.
void count(const std::string& what);
// With CUDA_EMULATOR_STATS set, keeps the largest `value` seen as `what`'s count (e.g. the bytes in use).
void high_water(const std::string& what, uint64_t value);

// Prints "cuda emulator: " + what to stderr (the driver's errors carry no text of their own).
void complain(const std::string& what);
}  // namespace emu
