// NVRTC (libnvrtc.so) for the emulator: "compiling" a program finds the program compiled into the emulator with the
// same text (common.cuh + the .cu file, as src/kernels/cuda/sources.rs hands it over) and names it in the "PTX";
// a text the emulator was not built from fails with a log that says to rebuild it.
#include "runtime.h"
#include <cstring>

using nvrtcResult = int;

namespace {
constexpr nvrtcResult kSuccess = 0, kInvalidInput = 3, kInvalidProgram = 4, kCompilation = 6;

struct Compiled {
    std::string name, text, ptx, log;
};
}  // namespace

extern "C" {
const char* nvrtcGetErrorString(nvrtcResult r) {
    switch (r) {
        case kSuccess: return "NVRTC_SUCCESS";
        case kCompilation: return "NVRTC_ERROR_COMPILATION";
        case kInvalidProgram: return "NVRTC_ERROR_INVALID_PROGRAM";
        default: return "NVRTC_ERROR_INVALID_INPUT";
    }
}
nvrtcResult nvrtcVersion(int* major, int* minor) {
    *major = 13;
    *minor = 0;
    return kSuccess;
}
nvrtcResult nvrtcCreateProgram(void** prog, const char* src, const char* name, int, const char* const*,
                               const char* const*) {
    if (!prog || !src) return kInvalidInput;
    *prog = new Compiled{name ? name : "default_program", src, "", ""};
    return kSuccess;
}
nvrtcResult nvrtcDestroyProgram(void** prog) {
    delete static_cast<Compiled*>(*prog);
    *prog = nullptr;
    return kSuccess;
}
nvrtcResult nvrtcCompileProgram(void* prog, int, const char* const*) {
    auto* c = static_cast<Compiled*>(prog);
    if (!c) return kInvalidProgram;
    for (const auto& p : emu::programs())
        if (c->text == p.text) {
            c->ptx = std::string("condlm CUDA emulator: ") + p.file;
            return kSuccess;
        }
    c->log = c->name + ": the CUDA emulator was not built from this text of the program (the kernel sources changed "
             "since it was built): rebuild it (tests/common/cuda_emulator.rs)";
    return kCompilation;
}
nvrtcResult nvrtcGetPTXSize(void* prog, size_t* n) {
    *n = static_cast<Compiled*>(prog)->ptx.size() + 1;
    return kSuccess;
}
nvrtcResult nvrtcGetPTX(void* prog, char* out) {
    const auto& ptx = static_cast<Compiled*>(prog)->ptx;
    memcpy(out, ptx.c_str(), ptx.size() + 1);
    return kSuccess;
}
// The "CUBIN" names the program as the "PTX" does, under its own prefix (driver.cpp tells them apart).
nvrtcResult nvrtcGetCUBINSize(void* prog, size_t* n) {
    *n = static_cast<Compiled*>(prog)->ptx.size() + 1 + 6;
    return kSuccess;
}
nvrtcResult nvrtcGetCUBIN(void* prog, char* out) {
    const auto cubin = "cubin " + static_cast<Compiled*>(prog)->ptx;
    memcpy(out, cubin.c_str(), cubin.size() + 1);
    return kSuccess;
}
nvrtcResult nvrtcGetProgramLogSize(void* prog, size_t* n) {
    *n = static_cast<Compiled*>(prog)->log.size() + 1;
    return kSuccess;
}
nvrtcResult nvrtcGetProgramLog(void* prog, char* out) {
    const auto& log = static_cast<Compiled*>(prog)->log;
    memcpy(out, log.c_str(), log.size() + 1);
    return kSuccess;
}
}
