"""The machine line every benchmark report opens with: the CPU's model, its logical CPUs, and the instruction-set
flags condlm dispatches on at run time (AVX2/AVX-512/VNNI/BF16/AMX come and go between machines, and ratios move
with them)."""
import os, platform

SIMD = ("avx", "fma", "amx", "f16c")


def cpu_flags():
    """The SIMD flags of /proc/cpuinfo's first processor (empty where there is no /proc/cpuinfo)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return [f for f in line.split(":", 1)[1].split() if f.startswith(SIMD) or "vnni" in f or "bf16" in f]
    except OSError:
        pass
    return []


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe():
    """'AMD EPYC, 2 logical CPUs (fma avx avx2 avx512f …)'."""
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs ({' '.join(cpu_flags())})"
