// What the emulator's parts share: the kernel programs compiled into it (each registers itself when the library
// loads) and the launch of one kernel over a grid (threads.cpp).
#pragma once
#include "device.h"
#include <string>
#include <vector>

namespace emu {
using Trampoline = void (*)(void** args);

struct Kernel {
    const char* name;
    Trampoline run;
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

// With CUDA_EMULATOR_STATS set, counts one `what` (a kernel launch, a GEMM, a copy, a synchronize); the counts go
// to stderr when the process exits — how many launches and host round trips a command makes, which a GPU pays
// for in launch latency and stalls whatever its kernels' speed.
void count(const std::string& what);

// Prints "cuda emulator: " + what to stderr (the driver's errors carry no text of their own).
void complain(const std::string& what);
}  // namespace emu
