"""The machine line every benchmark report opens with: the CPU's model, its logical CPUs, and the instruction-set
flags condlm dispatches on at run time (AVX2/AVX-512/VNNI/BF16/AMX come and go between machines, and ratios move
with them)."""
import os, platform

SIMD = ("avx", "fma", "amx", "f16c")


def cpuinfo(key):
    """The value of /proc/cpuinfo's first `key` line, or None (no such line, or no /proc/cpuinfo)."""
    try:
        return next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith(key)), None)
    except OSError:
        return None


def describe():
    """'AMD EPYC, 2 logical CPUs (fma avx avx2 avx512f …)'."""
    name = cpuinfo("model name") or platform.processor() or platform.machine()
    flags = [f for f in (cpuinfo("flags") or "").split() if f.startswith(SIMD) or "vnni" in f or "bf16" in f]
    return f"{name}, {os.cpu_count()} logical CPUs ({' '.join(flags)})"
