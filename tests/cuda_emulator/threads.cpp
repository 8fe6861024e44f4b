// The emulator's GPU: a kernel launch runs its blocks one after another; within a block each CUDA thread is a fiber
// (its own stack, switched in user space) that runs until it waits at __syncthreads or a warp shuffle, then the next
// ready fiber runs. A barrier releases when every thread it waits for has arrived; threads that can never all
// arrive (a shuffle a lane skipped, a __syncthreads some threads never reach) end the launch with an error instead
// of hanging. A read or write outside device memory stops the process with the kernel, block and thread named.
#include "runtime.h"
#include <csignal>
#include <map>
#include <cstdio>
#include <cstdlib>
#include <sys/mman.h>
#include <unistd.h>

namespace emu {
uint3 thread_idx, block_idx;
dim3 block_dim, grid_dim;

namespace {
enum class State { Ready, AtSyncthreads, AtShuffle, Done };
// What a lane waiting at a warp-wide meeting (State::AtShuffle) takes part in.
enum class Meet { Shuffle, Exchange };

struct Fiber {
    void* sp = nullptr;     // the stack pointer it was switched out at
    char* stack = nullptr;  // kStack bytes above a guard page
    uint3 idx{};
    State state = State::Ready;
    unsigned mask = 0;       // the warp-wide meeting it waits at: lanes, and what kind
    Meet meet = Meet::Shuffle;
    uint64_t offered = 0, got = 0;  // a shuffle: the bits it offers and gets, the lane it reads
    int source = 0;
    const void* data = nullptr;  // an exchange: the bytes it offers
    size_t bytes = 0;
};

constexpr size_t kStack = 64 * 1024;
constexpr int kMaxThreads = 1024;

std::vector<Fiber> fibers;  // one per thread of a block, stacks kept between launches
std::vector<int> arrived;   // per warp: lanes waiting at its shuffle
size_t live = 0;            // threads of the running block not Done
size_t at_syncthreads = 0;
Fiber* running = nullptr;
void* scheduler_sp = nullptr;
const Kernel* kernel = nullptr;
void** kernel_args = nullptr;
}  // namespace
}  // namespace emu

// emu_switch(save, to): stores the stack pointer in *save and continues where `to` was saved (or at a new fiber's
// entry). Only the callee-saved registers need keeping: the switch is an ordinary call to both sides.
extern "C" void emu_switch(void** save, void* to);
extern "C" void emu_fiber_entry();
extern "C" [[noreturn]] void emu_fiber_main(emu::Fiber* f);

#if defined(__x86_64__)
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
    .globl emu_fiber_entry
    .type emu_fiber_entry, @function
emu_fiber_entry:
    movq %r12, %rdi
    call emu_fiber_main
    ud2
    .size emu_fiber_entry, .-emu_fiber_entry
)");

// A new fiber's saved frame: six callee-saved registers (r12 = the fiber), then emu_fiber_entry as the return
// address; after `ret` the stack is 16-byte aligned, as a `call` into emu_fiber_main wants it. Each fiber's stack
// starts at its own offset within a page: stacks a whole number of pages apart would put every fiber's working
// frames in the same cache sets, and switching would miss every time.
static void* first_frame(emu::Fiber* f, size_t index) {
    const size_t color = index * 448 % 4096;
    auto top = reinterpret_cast<uintptr_t>(f->stack + emu::kStack - color) & ~uintptr_t(15);
    auto* sp = reinterpret_cast<uint64_t*>(top - 72);
    for (int i = 0; i < 6; ++i) sp[i] = 0;
    sp[3] = reinterpret_cast<uint64_t>(f);  // popped into r12
    sp[6] = reinterpret_cast<uint64_t>(&emu_fiber_entry);
    return sp;
}
#else
#error "the CUDA emulator switches fibers with x86-64 assembly only (tests/cuda_emulator/threads.cpp)"
#endif

namespace emu {
namespace {
int linear(const uint3& t) { return int(t.x + block_dim.x * (t.y + block_dim.y * t.z)); }

size_t threads_in_block() { return size_t(block_dim.x) * block_dim.y * block_dim.z; }

// CUDA_EMULATOR_ORDER=reverse runs a block's threads last to first between barriers: a kernel that relies on a
// lower thread having written shared memory without a __syncthreads in between then reads stale values, as a
// GPU's warps, which run in no fixed order, may.
const bool reverse = [] {
    const char* v = getenv("CUDA_EMULATOR_ORDER");
    return v && std::string(v) == "reverse";
}();

void release_syncthreads();

// Hands the CPU to the next ready thread after the running one (round robin), or back to the scheduler when none is
// ready (the block is done, or stuck). Returns when this fiber is chosen again.
void yield() {
    Fiber* me = running;
    const size_t n = threads_in_block(), at = size_t(me - fibers.data());
    for (size_t step = 1; step <= n; ++step) {
        Fiber& next = fibers[reverse ? (at + n - step) % n : (at + step) % n];
        if (next.state != State::Ready) continue;
        if (&next == me) return;
        running = &next;
        thread_idx = next.idx;
        emu_switch(&me->sp, next.sp);
        return;
    }
    emu_switch(&me->sp, scheduler_sp);
}
}  // namespace
}  // namespace emu

extern "C" void emu_fiber_main(emu::Fiber* f) {
    emu::kernel->run(emu::kernel_args);
    f->state = emu::State::Done;
    --emu::live;
    // A thread that exits lowers the count __syncthreads waits for.
    emu::release_syncthreads();
    emu::yield();
    __builtin_unreachable();
}

namespace emu {
namespace {
void release_syncthreads() {
    if (at_syncthreads == 0 || at_syncthreads < live) return;
    for (auto& f : fibers)
        if (f.state == State::AtSyncthreads) f.state = State::Ready;
    at_syncthreads = 0;
}

// The lanes of `warp` that exist in this block.
std::pair<size_t, size_t> warp_range(size_t warp, size_t threads) {
    return {warp * 32, std::min(threads, warp * 32 + 32)};
}
}  // namespace

void syncthreads() {
    running->state = State::AtSyncthreads;
    ++at_syncthreads;
    release_syncthreads();
    yield();
}

namespace {
// Waits with the lanes of `mask` at a warp-wide meeting of `kind` (the running fiber's offer already recorded):
// the last lane to arrive checks that every named lane meets the same way, runs `release(first, end)` over the
// warp's threads while all of them still wait, and lets them go on.
template <typename Release>
void meet_warp(unsigned mask, Meet kind, Release release) {
    Fiber* me = running;
    const int lane = linear(me->idx) % 32;
    if (!(mask >> lane & 1)) {
        complain(std::string("kernel ") + kernel->name + ": lane " + std::to_string(lane) +
                 " calls a warp-wide operation whose mask leaves it out (undefined in CUDA)");
        abort();
    }
    me->state = State::AtShuffle;
    me->mask = mask;
    me->meet = kind;
    const size_t warp = size_t(linear(me->idx)) / 32;
    auto [first, end] = warp_range(warp, threads_in_block());
    // The lanes named in the mask that exist; all of them offer before any reads.
    const unsigned lanes = end - first == 32 ? ~0u : (1u << (end - first)) - 1;
    if (++arrived[warp] == __builtin_popcount(mask & lanes)) {
        arrived[warp] = 0;
        for (size_t t = first; t < end; ++t) {
            const Fiber& f = fibers[t];
            if (!(mask >> (t - first) & 1)) continue;
            if (f.state != State::AtShuffle || f.mask != mask || f.meet != kind || f.bytes != me->bytes) {
                complain(std::string("kernel ") + kernel->name +
                         ": the lanes of a warp meet at shuffles or exchanges with other masks or sizes, or one named "
                         "lane is elsewhere (undefined in CUDA)");
                abort();
            }
        }
        release(first, end);
        for (size_t t = first; t < end; ++t)
            if (mask >> (t - first) & 1) fibers[t].state = State::Ready;
    }
    yield();
}

// Per warp: what the lanes offered at the last exchange, lane after lane (read by each lane once it goes on; the
// next exchange cannot release before every lane has read it and arrived there).
std::vector<std::vector<char>> exchanged;
}  // namespace

uint64_t shuffle_xor(unsigned mask, uint64_t bits, int lane_mask, int width) {
    Fiber* me = running;
    const int lane = linear(me->idx) % 32;
    int source = lane ^ lane_mask;
    if (source / width != lane / width) source = lane;  // outside the lane's segment: its own value
    me->offered = bits;
    me->source = source;
    me->bytes = sizeof bits;
    meet_warp(mask, Meet::Shuffle, [](size_t first, size_t end) {
        for (size_t t = first; t < end; ++t) {
            Fiber& f = fibers[t];
            const size_t from = first + size_t(f.source);
            // A lane past the block's last thread does not exist: the read gets the lane's own value.
            f.got = from < end ? fibers[from].offered : f.offered;
        }
    });
    return me->got;
}

void warp_exchange(unsigned mask, const void* mine, void* all, size_t bytes) {
    Fiber* me = running;
    me->data = mine;
    me->bytes = bytes;
    const size_t warp = size_t(linear(me->idx)) / 32;
    if (exchanged.size() <= warp) exchanged.resize(warp + 1);
    meet_warp(mask, Meet::Exchange, [&](size_t first, size_t end) {
        std::vector<char>& out = exchanged[warp];
        out.assign(32 * bytes, 0);
        for (size_t t = first; t < end; ++t)
            if (mask >> (t - first) & 1) std::memcpy(&out[(t - first) * bytes], fibers[t].data, bytes);
    });
    std::memcpy(all, exchanged[warp].data(), 32 * bytes);
}

namespace {
std::string describe(uint3 v) {
    return "(" + std::to_string(v.x) + ", " + std::to_string(v.y) + ", " + std::to_string(v.z) + ")";
}

// Why no thread is ready while some are not done: every such thread waits at a barrier that cannot release.
std::string stuck() {
    std::string why;
    for (auto& f : fibers) {
        if (f.state == State::Done) continue;
        why += "\n  thread " + describe(f.idx) + (f.state == State::AtSyncthreads ? " waits at __syncthreads" : "");
        if (f.state == State::AtShuffle) {
            const size_t threads = size_t(block_dim.x) * block_dim.y * block_dim.z;
            auto [first, end] = warp_range(size_t(linear(f.idx)) / 32, threads);
            why += " waits at a warp shuffle or exchange (mask " + std::to_string(f.mask) + ") for lanes";
            for (size_t t = first; t < end; ++t)
                if ((f.mask >> (t - first) & 1) && fibers[t].state != State::AtShuffle)
                    why += " " + std::to_string(t - first) +
                           (fibers[t].state == State::Done ? " (exited)" : " (at __syncthreads)");
        }
    }
    return why;
}

// The fault handler's view of what was running.
volatile sig_atomic_t in_kernel = 0;

void on_fault(int sig, siginfo_t* info, void*) {
    if (!in_kernel) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    char msg[512];
    const uint3 t = running ? running->idx : uint3{};
    // SIGILL or SIGTRAP: a trap, most likely the one the kernels are compiled with for a misaligned access
    // (tests/common/cuda_emulator.rs; SIGILL on x86-64, SIGTRAP elsewhere).
    const bool trap = sig == SIGILL || sig == SIGTRAP;
    const char* what = trap ? "trapped (likely a load or store at an address not a multiple of its type's size, "
                              "which a GPU faults on) at instruction"
                            : "read or wrote";
    const char* why = trap ? "" : ", outside every device allocation (an index past a buffer's end, or a fiber's "
                                  "stack overflowed)";
    int n = snprintf(msg, sizeof msg, "cuda emulator: kernel %s, block (%u, %u, %u), thread (%u, %u, %u): %s %p%s\n",
                     kernel ? kernel->name : "?", block_idx.x, block_idx.y, block_idx.z, t.x, t.y, t.z, what,
                     info->si_addr, why);
    if (n > 0) (void)!write(2, msg, size_t(n) < sizeof msg ? size_t(n) : sizeof msg - 1);
    _exit(139);
}

void install_fault_handler() {
    static bool done = false;
    if (done) return;
    done = true;
    static char alt[64 * 1024];
    stack_t ss{};
    ss.ss_sp = alt;
    ss.ss_size = sizeof alt;
    sigaltstack(&ss, nullptr);
    struct sigaction sa {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
    sigaction(SIGILL, &sa, nullptr);
    sigaction(SIGTRAP, &sa, nullptr);
}

// Stacks for `threads` fibers, each above a PROT_NONE page that turns an overflow into a fault.
bool grow(size_t threads) {
    while (fibers.size() < threads) {
        const size_t page = size_t(sysconf(_SC_PAGESIZE));
        void* p = mmap(nullptr, kStack + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return false;
        mprotect(p, page, PROT_NONE);
        Fiber f;
        f.stack = static_cast<char*>(p) + page;
        fibers.push_back(f);
    }
    return true;
}

// Runs one block to the end; returns an empty string or why its threads cannot go on.
std::string run_block(size_t threads) {
    for (size_t t = 0; t < threads; ++t) {
        Fiber& f = fibers[t];
        f.idx = {unsigned(t % block_dim.x), unsigned(t / block_dim.x % block_dim.y),
                 unsigned(t / (size_t(block_dim.x) * block_dim.y))};
        f.state = State::Ready;
        f.sp = first_frame(&f, t);
    }
    live = threads;
    at_syncthreads = 0;
    arrived.assign((threads + 31) / 32, 0);
    // The threads hand over to each other (yield) and come back here when none is ready.
    Fiber& first = fibers[reverse ? threads - 1 : 0];
    running = &first;
    thread_idx = first.idx;
    emu_switch(&scheduler_sp, first.sp);
    running = nullptr;
    return live == 0 ? std::string() : "threads that can never go on:" + stuck();
}
}  // namespace

// The bounds of device.h's `emu_shared` section (the linker's names for it), weak: a build without kernels has none.
extern "C" char __start_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_emu_shared[] __attribute__((weak, visibility("hidden")));

std::string launch(const Kernel& k, dim3 grid, dim3 block, void** args) {
    const size_t threads = size_t(block.x) * block.y * block.z;
    if (threads == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0)
        return "an empty grid or block (CUDA refuses it: CUDA_ERROR_INVALID_VALUE)";
    if (threads > size_t(kMaxThreads) || block.z > 64)
        return "a block of " + std::to_string(threads) + " threads (at most 1024, z at most 64)";
    if (grid.y > 65535 || grid.z > 65535) return "a grid with y or z above 65 535";
    if (!grow(threads)) return "no memory for the threads' stacks";
    install_fault_handler();
    kernel = &k;
    kernel_args = args;
    block_dim = block;
    grid_dim = grid;
    in_kernel = 1;
    std::string err;
    for (unsigned z = 0; z < grid.z && err.empty(); ++z)
        for (unsigned y = 0; y < grid.y && err.empty(); ++y)
            for (unsigned x = 0; x < grid.x && err.empty(); ++x) {
                block_idx = {x, y, z};
                if (__start_emu_shared != nullptr)
                    memset(__start_emu_shared, 0xff, size_t(__stop_emu_shared - __start_emu_shared));
                err = run_block(threads);
                if (!err.empty()) err = "block " + describe(block_idx) + ": " + err;
            }
    in_kernel = 0;
    kernel = nullptr;
    return err;
}

void complain(const std::string& what) { fprintf(stderr, "cuda emulator: %s\n", what.c_str()); }

namespace {
std::map<std::string, uint64_t>& counts() {
    static std::map<std::string, uint64_t> all;
    return all;
}

void print_counts() {
    uint64_t launches = 0;
    for (auto& [what, n] : counts()) {
        fprintf(stderr, "cuda emulator: %10llu %s\n", (unsigned long long)n, what.c_str());
        if (what.rfind("launch ", 0) == 0) launches += n;
    }
    fprintf(stderr, "cuda emulator: %10llu kernel launches in all\n", (unsigned long long)launches);
}

// Whether CUDA_EMULATOR_STATS asks for the counts (registering their printing at exit the first time).
bool stats_on() {
    static const bool on = [] {
        if (getenv("CUDA_EMULATOR_STATS") == nullptr) return false;
        counts();  // made before print_counts is registered, so destroyed after it ran
        atexit(print_counts);
        return true;
    }();
    return on;
}
}  // namespace

void count(const std::string& what) {
    if (stats_on()) ++counts()[what];
}

void high_water(const std::string& what, uint64_t value) {
    if (stats_on() && counts()[what] < value) counts()[what] = value;
}

namespace {
std::vector<Program>& registry() {
    static std::vector<Program> all;
    return all;
}
}  // namespace

Registered::Registered(Program p) { registry().push_back(std::move(p)); }

const std::vector<Program>& programs() { return registry(); }
}  // namespace emu
