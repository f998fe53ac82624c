"""Builds sparsedistill's native kernels through torch.utils.cpp_extension.

Environment switches:
  SPARSEDISTILL_SKIP_NATIVE=1   build no extension (every op runs on its PyTorch reference)
  SPARSEDISTILL_SKIP_CUDA=1     build the C++ CPU kernels only
  SPARSEDISTILL_CUDA_ARCH       CUDA archs, default "80;90" (PTX is added for the last)
  SPARSEDISTILL_CPU_ISA         auto (default: the best of AVX512, AVX2 the build machine has), avx2, avx512, none
  SPARSEDISTILL_DEBUG=1         -O0 -g, and -G -lineinfo for CUDA
CUDA sources build when torch has CUDA (torch.version.cuda) and nvcc is found; no GPU is needed.
"""
import glob
import os
import platform
import shutil

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def env_flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def detect_cpu_isa() -> str:
    requested = os.environ.get("SPARSEDISTILL_CPU_ISA", "auto").lower()
    if requested != "auto":
        return requested
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "none"
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return "none"
    if all(f" {f}" in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq")):
        return "avx512"
    return "avx2" if (" avx2" in flags and " fma" in flags) else "none"


# at::vec picks its implementation from CPU_CAPABILITY_*; the kernels #error if it is missing.
ISA_FLAGS = {
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2",
             "-DSPARSEDISTILL_EXPECT_AVX2"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512", "-DSPARSEDISTILL_EXPECT_AVX512"],
    "none": [],
}


def cuda_gencode_flags(archs: str) -> list:
    archs = [a.strip().replace(".", "") for a in archs.replace(",", ";").split(";") if a.strip()]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags


def write_build_config(config: dict) -> None:
    path = os.path.join(HERE, "sparsedistill", "_build_config.py")
    with open(path, "w") as f:
        f.write("# Written by setup.py at build time; read by sparsedistill/_library.py.\n")
        f.write(f"BUILD_CONFIG = {config!r}\n")


def extensions_and_cmdclass():
    if env_flag("SPARSEDISTILL_SKIP_NATIVE"):
        write_build_config({"native": False, "cpu_isa": None, "cuda": False})
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    debug = env_flag("SPARSEDISTILL_DEBUG")
    isa = detect_cpu_isa()
    if isa not in ISA_FLAGS:
        raise SystemExit(f"SPARSEDISTILL_CPU_ISA must be auto, avx2, avx512 or none, got {isa!r}")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # at::parallel_for is an OpenMP pragma in a header: without -fopenmp it silently runs serially.
    include = [f"-I{os.path.join(HERE, 'csrc')}"]  # includes name their area: "prune/checks.h"
    cxx = [*opt, "-fopenmp", *include, *ISA_FLAGS[isa]]  # the C++ standard is the one torch asks for
    link = ["-fopenmp"]
    # csrc/<area>/*.cpp are the CPU kernels (csrc/common/module.cpp the Python module),
    # csrc/<area>/cuda/ the CUDA kernels (*.cu, no torch headers) and their host wrappers (*.cpp).
    sources = sorted(glob.glob(os.path.join("csrc", "*", "*.cpp")))

    nvcc_found = CUDA_HOME is not None or shutil.which("nvcc") is not None
    use_cuda = torch.version.cuda is not None and nvcc_found and not env_flag("SPARSEDISTILL_SKIP_CUDA")
    archs = os.environ.get("SPARSEDISTILL_CUDA_ARCH", "80;90")
    config = {"native": True, "cpu_isa": isa, "cuda": use_cuda, "cuda_arch": archs if use_cuda else None,
              "debug": debug, "torch": torch.__version__, "cxx_flags": cxx}
    write_build_config(config)
    if use_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "*", "cuda", "*.cpp")))
        sources += sorted(glob.glob(os.path.join("csrc", "*", "cuda", "*.cu")))
        nvcc = ["-std=c++17", "-O3", *include, *cuda_gencode_flags(archs)]
        if debug:
            nvcc += ["-G", "-lineinfo"]
        ext = CUDAExtension("sparsedistill._C", sources, extra_compile_args={"cxx": cxx + ["-DSPARSEDISTILL_WITH_CUDA"], "nvcc": nvcc},
                            extra_link_args=link)
    else:
        ext = CppExtension("sparsedistill._C", sources, extra_compile_args={"cxx": cxx},
                           extra_link_args=link)
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = extensions_and_cmdclass()
setup(packages=find_packages(include=["sparsedistill", "sparsedistill.*"]),
      ext_modules=ext_modules, cmdclass=cmdclass)
