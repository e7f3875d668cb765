"""Every environment knob of gtopk_mpi, declared once: name, type, default and meaning.

The package reads the environment only through these declarations (``knob.get()``, at
the time of use, so a script may set a variable before the call that needs it). The
README's knob table is this module's output (``python -m gtopk_mpi.config``) and a test
checks that the two agree and that no file reads an undeclared ``GTOPK_*`` variable.

This module imports nothing but the standard library: setup.py loads it before the
package is built.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Knob:
    """One environment variable: ``kind`` is int, float, bool, str or choice."""

    name: str
    kind: str
    default: object
    meaning: str
    scope: str = "runtime"       # runtime (the package), build (setup.py), scripts, tests
    choices: tuple[str, ...] = ()

    def get(self):
        """The variable's value, parsed; the default when unset or empty.

        A value that does not parse raises ValueError naming the variable.
        """
        raw = os.environ.get(self.name, "").strip()
        if not raw:
            return self.default
        try:
            if self.kind == "int":
                return int(raw)
            if self.kind == "float":
                return float(raw)
            if self.kind == "bool":
                if raw.lower() in _TRUE + _FALSE:
                    return raw.lower() in _TRUE
                raise ValueError
        except ValueError:
            raise ValueError(f"{self.name}={raw!r}: expected {'0 or 1' if self.kind == 'bool' else 'an ' + self.kind}"
                             ) from None
        if self.choices and raw.lower() not in self.choices:
            raise ValueError(f"{self.name}={raw!r}: expected one of {', '.join(self.choices)}")
        return raw.lower() if self.choices else raw


NUM_THREADS = Knob("GTOPK_NUM_THREADS", "int", 1, "OpenMP threads of the CPU top-k selection (ranks share cores)")
FUSION_THRESHOLD = Knob("GTOPK_FUSION_THRESHOLD", "float", math.inf,
                        "bytes per gradient bucket of DistributedOptimizer (default: one bucket per dtype)")
WIRE = Knob("GTOPK_WIRE", "choice", "bf16",
            "message format of the torch front end's sparse compressions: bf16 / fp16 (float32 values in 16 bits, "
            "rounding errors kept in the residuals), fp32 (values in their dtype: lossless), raw (unpacked 8-byte "
            "pairs); indices travel packed except with raw",
            choices=("fp32", "bf16", "fp16", "raw"))
DENSITY = Knob("GTOPK_DENSITY", "float", None,
               "switch an unchanged Horovod script to gTop-k: DistributedOptimizer without a compression gets "
               "Compression.gtopk(density)")
MIN_K = Knob("GTOPK_MIN_K", "int", 6055,
              "training paths (DistributedOptimizer, the DDP hook): k is at least this many entries, and a bucket "
              "whose k entries would take as many bytes as its dense values is reduced densely; the default is "
              "Hockney's half-performance length alpha / beta of the paper's 1 GbE fit (0.436 ms / 9 ns per byte) "
              "in 8-byte entries: shorter messages cost mostly latency (0: k = ceil(density * m), never dense)")
DENSITY_WARMUP = Knob("GTOPK_DENSITY_WARMUP", "str", "0.25,0.0625,0.0156,0.004",
                      "training paths: densities of the first steps, each for GTOPK_DENSITY_WARMUP_STEPS steps, "
                      "where the caller gives none (the paper's schedule; none: no warm-up)")
DENSITY_WARMUP_STEPS = Knob("GTOPK_DENSITY_WARMUP_STEPS", "int", 100,
                            "steps of each GTOPK_DENSITY_WARMUP density where the caller gives none")
CYCLE_TIME = Knob("GTOPK_CYCLE_TIME", "float", 1.0,
                  "ms the torch engine sleeps after a round that found nothing to run")
STALL_CHECK_TIME = Knob("GTOPK_STALL_CHECK_TIME_SECONDS", "float", 60.0,
                        "warn about ops some ranks have not submitted after this many seconds (0: off)")
STALL_SHUTDOWN_TIME = Knob("GTOPK_STALL_SHUTDOWN_TIME_SECONDS", "float", 0.0,
                           "after this many seconds a stall ends the call on every rank (torch engine) or the job "
                           "(a collective waiting on a rank) instead of waiting on (0: never)")
ABORT_ON_ERROR = Knob("GTOPK_ABORT_ON_ERROR", "bool", True,
                      "1: an uncaught exception on any rank ends the whole job within about a second; 0: the rank "
                      "exits alone and ranks waiting on it raise PeerGoneError")
DYNAMIC_PROCESS_SETS = Knob("HOROVOD_DYNAMIC_PROCESS_SETS", "bool", False,
                            "gtopk_mpi.torch: allow add_process_set / remove_process_set after init (Horovod's name)")
TIMELINE = Knob("GTOPK_TIMELINE", "str", None, "file: rank 0 writes a Chrome trace of every torch op")
HIERARCHICAL = Knob("GTOPK_HIERARCHICAL", "choice", "auto",
                    "gTop-k's schedule when ranks share hosts: auto (hierarchical when there are several hosts and "
                    "one holds several ranks), 1 (always), 0 (flat butterfly over all ranks)",
                    choices=("auto", "0", "1"))
RANKS_PER_HOST = Knob("GTOPK_RANKS_PER_HOST", "int", 0,
                      "treat ranks h*L .. h*L+L-1 as host h (emulating hosts on one machine); 0: ask MPI which "
                      "ranks share memory")
YIELD = Knob("GTOPK_YIELD", "bool", True,
             "1: yield the core while waiting for a partner (oversubscribed machines); 0: block in MPI")
MALLOC_TUNE = Knob("GTOPK_MALLOC_TUNE", "bool", True,
                   "1: set glibc's mmap threshold to 32 MiB and trim threshold to 64 MiB (where its own adjustment "
                   "tops out), so the collectives' per-call buffers reuse mapped pages instead of faulting new ones "
                   "in on every call; 0, or any MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ / MALLOC_TOP_PAD_ "
                   "set: leave malloc as it is")
CUDA_AWARE = Knob("GTOPK_MPI_CUDA_AWARE", "bool", False,
                  "1: the collectives on CUDA tensors keep sets and messages in device memory and hand device "
                  "buffers to a CUDA-aware MPI (merges on the GPU); 0: stage the k pairs through pinned host memory")
DEVICE_KERNELS = Knob("GTOPK_DEVICE_KERNELS", "choice", "auto",
                      "the kernels on device tensors: auto (the custom CUDA kernels on a CUDA GPU where built and "
                      "working, else torch's own operations; logged once per device), cuda (the custom kernels, "
                      "an error where not built), torch (torch's operations on any device: CUDA, ROCm, MPS, XPU)",
                      choices=("auto", "cuda", "torch"))
WITH_CUDA = Knob("GTOPK_MPI_WITH_CUDA", "choice", "auto",
                 "build the CUDA kernels: auto (when a toolkit is under $CUDA_HOME or /usr/local/cuda), 1, 0",
                 scope="build", choices=("auto", "0", "1"))
WITH_OPENMP = Knob("GTOPK_MPI_WITH_OPENMP", "bool", True, "build the CPU kernels with OpenMP", scope="build")
CUDA_ARCHS = Knob("GTOPK_CUDA_ARCHS", "str", "75,80,90", "comma-separated sm_ versions to build (PTX of the last too)",
                  scope="build")
MPI = Knob("GTOPK_MPI", "choice", "wheel",
           "scripts/setup_env.sh: wheel (the mpich wheel) or system (mpi4py built against the mpicc on PATH)",
           scope="scripts", choices=("wheel", "system"))
MPIEXEC = Knob("GTOPK_MPIEXEC", "str", None, "the mpiexec that scripts and tests launch with (default: the venv's)",
               scope="scripts")
TEST_TRANSPORT = Knob("GTOPK_TEST_TRANSPORT", "choice", "mpi",
                      "tests/suites/mpi_suite.py, hier_suite.py: the collectives' transport, mpi (under mpiexec) "
                      "or dist (torch.distributed with gloo, under torchrun)", scope="tests", choices=("mpi", "dist"))
TEST_DEVICE_KERNELS = Knob("GTOPK_TEST_DEVICE_KERNELS", "choice", None,
                           "tests/programs/cuda_collective_check.py: CPU tensors stand in for device memory, run by "
                           "the emulator (the CUDA kernels on the SIMT emulator) or torch (torch's operations); "
                           "unset: a GPU", scope="tests", choices=("emulator", "torch"))
TEST_M = Knob("GTOPK_TEST_M", "int", 1_100_000, "tests/programs/cuda_collective_check.py: vector length",
              scope="tests")
TEST_CUDA_AWARE = Knob("GTOPK_TEST_CUDA_AWARE", "bool", False,
                       "tests/programs/cuda_collective_check.py on a GPU: also check GTOPK_MPI_CUDA_AWARE=1",
                       scope="tests")

KNOBS: tuple[Knob, ...] = tuple(v for v in globals().values() if isinstance(v, Knob))


def markdown_table() -> str:
    """The README's knob table."""
    lines = ["| variable | scope | default | meaning |", "|---|---|---|---|"]
    for k in KNOBS:
        default = "unset" if k.default is None else "inf" if k.default == math.inf else str(k.default)
        if k.kind == "bool":
            default = str(int(bool(k.default)))
        lines.append(f"| `{k.name}` | {k.scope} | {default} | {k.meaning} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
