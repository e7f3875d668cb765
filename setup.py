"""Build gtopk_mpi's native extensions gtopk_mpi._C and gtopk_mpi._cuda_emu (the package's
metadata is pyproject.toml's [project] table).

C++17 + pybind11 + OpenMP for the CPU kernels. CUDA sources (csrc/cuda/*.cu) are
compiled with nvcc and linked with the static CUDA runtime (libcudart.so where the toolkit
has none) according to GTOPK_MPI_WITH_CUDA:

* ``auto`` (default): when a toolkit is found through $CUDA_HOME or /usr/local/cuda;
* ``1``: required (the build fails without a toolkit);
* ``0``: never.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
CONFIG = runpy.run_path(str(ROOT / "gtopk_mpi" / "config.py"))  # the knobs, without importing the package
# sm_75, sm_80, sm_90 plus PTX of the newest, for later GPUs; GTOPK_CUDA_ARCHS=90 builds one (faster checks)
CUDA_ARCHS = tuple(a.strip() for a in CONFIG["CUDA_ARCHS"].get().split(",") if a.strip())


def find_cuda_home() -> Path | None:
    """The CUDA toolkit named by $CUDA_HOME, else /usr/local/cuda, if it has nvcc."""
    for candidate in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if candidate and (Path(candidate) / "bin" / "nvcc").exists():
            return Path(candidate)
    return None


def cuda_wanted() -> Path | None:
    try:
        mode = CONFIG["WITH_CUDA"].get()
    except ValueError as e:
        sys.exit(str(e))
    if mode == "0":
        return None
    home = find_cuda_home()
    if home is None and mode == "1":
        sys.exit("GTOPK_MPI_WITH_CUDA=1 but no CUDA toolkit under $CUDA_HOME or /usr/local/cuda")
    cu_sources = sorted((CSRC / "cuda").glob("*.cu"))
    if home is not None and not cu_sources:
        print("gtopk_mpi: CUDA toolkit found but csrc/cuda has no sources; CPU-only build")
        return None
    return home


class BuildExt(build_ext):
    """build_ext that first compiles csrc/cuda/*.cu with nvcc when CUDA is enabled."""

    def build_extensions(self) -> None:
        home = cuda_wanted()
        if home is not None:
            for ext in self.extensions:
                if ext.name == "gtopk_mpi._C":
                    self._add_cuda(ext, home)
        super().build_extensions()

    def _add_cuda(self, ext: Pybind11Extension, home: Path) -> None:
        nvcc = str(home / "bin" / "nvcc")
        objdir = Path(self.build_temp) / "cuda"
        objdir.mkdir(parents=True, exist_ok=True)
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS]
        gencode.append(f"-gencode=arch=compute_{CUDA_ARCHS[-1]},code=compute_{CUDA_ARCHS[-1]}")
        for src in sorted((CSRC / "cuda").glob("*.cu")):
            obj = objdir / (src.stem + ".o")
            cmd = [nvcc, "-c", str(src), "-o", str(obj), "-std=c++17", "-O3", "-Xcompiler", "-fPIC", "-DNDEBUG",
                   f"-I{CSRC}", "--expt-relaxed-constexpr", *gencode]
            deps = [src, *CSRC.glob("*.h"), *(CSRC / "cuda").glob("*.h")]
            if not obj.exists() or obj.stat().st_mtime < max(p.stat().st_mtime for p in deps):
                print(" ".join(cmd))
                subprocess.check_call(cmd)
            ext.extra_objects.append(str(obj))
        ext.define_macros.append(("GTOPK_WITH_CUDA", "1"))
        ext.include_dirs.append(str(home / "include"))
        libdirs = [d for d in (home / "lib64", home / "lib", home / "targets" / "x86_64-linux" / "lib") if d.is_dir()]
        static = next((d for d in libdirs if (d / "libcudart_static.a").exists()), None)
        if static is not None:  # the module then imports on machines without a driver
            ext.library_dirs.append(str(static))
            ext.libraries.extend(["cudart_static", "rt", "dl", "pthread"])
            return
        shared = next((d for d in libdirs if any(d.glob("libcudart.so*"))), None)
        if shared is None:
            sys.exit(f"gtopk_mpi: no libcudart_static.a or libcudart.so under {home}")
        print(f"gtopk_mpi: no libcudart_static.a under {home}; linking libcudart.so from {shared}")
        ext.library_dirs.append(str(shared))
        ext.runtime_library_dirs.append(str(shared))
        ext.libraries.append("cudart")


def openmp_flags() -> list[str]:
    return ["-fopenmp"] if CONFIG["WITH_OPENMP"].get() else []


ext = Pybind11Extension(
    "gtopk_mpi._C",
    sources=sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.cpp")),
    include_dirs=[str(CSRC)],
    depends=sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.h")),
    cxx_std=17,
    extra_compile_args=["-O3", *openmp_flags()],
    extra_link_args=openmp_flags(),
)

# The CUDA path's kernels and launch sequence (csrc/cuda/topk_kernels.h) on a CPU SIMT
# emulator, so the tests check that code on machines without a GPU. Needs no toolkit.
emu = Pybind11Extension(
    "gtopk_mpi._cuda_emu",
    sources=sorted(str(p.relative_to(ROOT)) for p in (CSRC / "emu").glob("*.cpp")),
    include_dirs=[str(CSRC)],
    depends=sorted(str(p.relative_to(ROOT)) for p in [*CSRC.glob("*.h"), *CSRC.glob("*/*.h")]),
    cxx_std=17,
    extra_compile_args=["-O2"],
)

setup(ext_modules=[ext, emu], cmdclass={"build_ext": BuildExt}, zip_safe=False)
