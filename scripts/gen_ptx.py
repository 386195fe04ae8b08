#!/usr/bin/env python3
"""Generates src/kernels/postprocess.ptx from src/kernels/postprocess.cu with NVRTC 12.0.

The kernel includes src/kernels/layout.h, which is generated from the Rust constants of
src/kernels/mod.rs (their one source) and checked by a Rust test:
    DPCOORD_BLESS=1 cargo test --lib kernels   # rewrites layout.h from the constants

NVRTC 12.0 is pinned on purpose: its PTX (ISA 8.0, target sm_70) loads on any sm_70+ GPU
with any CUDA 12+ driver, and the output is byte-for-byte reproducible. Newer NVRTCs emit a
newer PTX ISA (which older drivers refuse) and CUDA 13's drops sm_70.

Usage:
    python3 scripts/gen_ptx.py           # (re)writes src/kernels/postprocess.ptx
    python3 scripts/gen_ptx.py --check   # exit 1 with a diff if the committed PTX is stale

NVRTC is looked up as $DPCOORD_NVRTC (a path to libnvrtc.so.12), else in the
nvidia-cuda-nvrtc-cu12 package on sys.path:
    python3 -m pip install nvidia-cuda-nvrtc-cu12==12.0.76

Exit status: 0 success (or, with --check, up to date); 1 --check found a difference;
2 the pinned NVRTC is not available (not installed, or another version); 3 compilation or
output check failed.

Standard library and ctypes only.
"""

import argparse
import ctypes
import difflib
import os
import re
import site
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = "src/kernels/postprocess.cu"
LAYOUT = "src/kernels/layout.h"
OUTPUT = "src/kernels/postprocess.ptx"

NVRTC_VERSION = (12, 0)
NVRTC_PIP = "nvidia-cuda-nvrtc-cu12==12.0.76"
INSTALL = f"python3 -m pip install {NVRTC_PIP}"
# Kept minimal; every option changes the PTX, so they are written into its header.
OPTIONS = ["--gpu-architecture=compute_70", "--std=c++17"]
# What NVRTC 12.0 emits for compute_70; checked so the header never lies.
PTX_VERSION = "8.0"
PTX_TARGET = "sm_70"


class Unavailable(Exception):
    """The pinned NVRTC cannot be used (exit 2)."""


class Failed(Exception):
    """Compilation or the output check failed (exit 3)."""


def candidate_libraries():
    """libnvrtc.so.12 of the nvidia-cuda-nvrtc-cu12 package, for every place it may be."""
    dirs = list(sys.path)
    try:
        dirs += site.getsitepackages()
    except AttributeError:  # some virtualenvs
        pass
    dirs.append(site.getusersitepackages())
    seen = []
    for d in dirs:
        path = os.path.join(d or ".", "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.12")
        path = os.path.abspath(path)
        if path not in seen and os.path.isfile(path):
            seen.append(path)
    return seen


def load_nvrtc():
    """Loads the pinned NVRTC and returns (library, path)."""
    explicit = os.environ.get("DPCOORD_NVRTC")
    if explicit:
        if not os.path.isfile(explicit):
            raise Unavailable(f"DPCOORD_NVRTC={explicit} is not a file")
        path = explicit
    else:
        found = candidate_libraries()
        if not found:
            raise Unavailable("libnvrtc.so.12 of the nvidia-cuda-nvrtc-cu12 package not found")
        path = found[0]
    # libnvrtc dlopens its builtins library by name; load the one beside it first so that
    # the name resolves to the same release whatever LD_LIBRARY_PATH says.
    builtins = os.path.join(os.path.dirname(path), "libnvrtc-builtins.so.12.0")
    try:
        if os.path.isfile(builtins):
            ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise Unavailable(f"cannot load {path}: {e}") from e
    major, minor = ctypes.c_int(), ctypes.c_int()
    if lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)) != 0:
        raise Unavailable(f"nvrtcVersion failed in {path}")
    if (major.value, minor.value) != NVRTC_VERSION:
        raise Unavailable(
            f"{path} is NVRTC {major.value}.{minor.value}; the PTX is pinned to NVRTC "
            f"{NVRTC_VERSION[0]}.{NVRTC_VERSION[1]}"
        )
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib, path


def check(lib, result, what):
    if result != 0:
        raise Failed(f"{what}: {lib.nvrtcGetErrorString(result).decode()}")


def compile_ptx(lib, source, layout):
    """Compiles `source` (which includes "layout.h", given as `layout`) with OPTIONS and
    returns NVRTC's PTX text."""
    prog = ctypes.c_void_p()
    headers = (ctypes.c_char_p * 1)(layout.encode())
    names = (ctypes.c_char_p * 1)(os.path.basename(LAYOUT).encode())
    check(
        lib,
        lib.nvrtcCreateProgram(
            ctypes.byref(prog), source.encode(), os.path.basename(SOURCE).encode(), 1, headers,
            names
        ),
        "nvrtcCreateProgram",
    )
    try:
        options = (ctypes.c_char_p * len(OPTIONS))(*[o.encode() for o in OPTIONS])
        compiled = lib.nvrtcCompileProgram(prog, len(OPTIONS), options)
        size = ctypes.c_size_t()
        check(lib, lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        log = ctypes.create_string_buffer(size.value)
        check(lib, lib.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        log = log.value.decode().strip()
        if compiled != 0:
            raise Failed(f"{SOURCE} does not compile:\n{log}")
        if log:  # warnings are errors: the committed PTX comes from clean source
            raise Failed(f"{SOURCE} compiles with diagnostics:\n{log}")
        check(lib, lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
        ptx = ctypes.create_string_buffer(size.value)
        check(lib, lib.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
        # size counts the terminating NUL, which create_string_buffer's .value drops.
        return ptx.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def release_of(ptx):
    """The full NVRTC release NVRTC wrote into the PTX ("12.0.76")."""
    m = re.search(r"^// Cuda compilation tools, release [0-9.]+, V([0-9.]+)$", ptx, re.M)
    if not m:
        raise Failed("NVRTC's PTX has no 'Cuda compilation tools' line")
    return m.group(1)


def check_body(ptx):
    """The PTX's own directives must say what the header will say."""
    for directive in (f".version {PTX_VERSION}", f".target {PTX_TARGET}", ".address_size 64"):
        if not re.search(rf"^{re.escape(directive)}$", ptx, re.M):
            raise Failed(f"NVRTC's PTX lacks the line '{directive}'")
    if re.search(r"\.local\b", ptx):
        raise Failed("NVRTC's PTX uses local memory (.local); keep the kernels spill-free")


def generate():
    """The full text of OUTPUT: our header, then NVRTC's PTX verbatim."""
    lib, _ = load_nvrtc()
    with open(os.path.join(ROOT, SOURCE), encoding="utf-8") as f:
        source = f.read()
    try:
        with open(os.path.join(ROOT, LAYOUT), encoding="utf-8") as f:
            layout = f.read()
    except FileNotFoundError as e:
        raise Failed(f"{LAYOUT} is missing: run `DPCOORD_BLESS=1 cargo test --lib kernels`") from e
    ptx = compile_ptx(lib, source, layout)
    check_body(ptx)
    header = [
        "// GENERATED FILE: do not edit.",
        f"// Generated by scripts/gen_ptx.py from {SOURCE} and {LAYOUT}",
        f"// with NVRTC {release_of(ptx)}, options: {' '.join(OPTIONS)}",
        f"// PTX ISA version {PTX_VERSION}, target {PTX_TARGET}: loads on any sm_70+ GPU "
        "with any CUDA 12+ driver.",
        "// Regenerate: python3 scripts/gen_ptx.py; check: python3 scripts/gen_ptx.py --check",
        f"// (NVRTC: {INSTALL})",
        "",
    ]
    return "\n".join(header) + "\n" + ptx


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 if {OUTPUT} differs from a fresh build"
    )
    args = parser.parse_args()
    try:
        text = generate()
    except Unavailable as e:
        print(
            f"gen_ptx.py: the pinned NVRTC {NVRTC_PIP} is not available: {e}.\n"
            f"Install it with:\n    {INSTALL}\n"
            "or set DPCOORD_NVRTC to the path of its libnvrtc.so.12.",
            file=sys.stderr,
        )
        return 2
    except Failed as e:
        print(f"gen_ptx.py: {e}", file=sys.stderr)
        return 3
    path = os.path.join(ROOT, OUTPUT)
    if not args.check:
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        print(f"gen_ptx.py: wrote {OUTPUT}")
        return 0
    try:
        with open(path, encoding="utf-8", newline="") as f:
            committed = f.read()
    except FileNotFoundError:
        committed = ""
    if committed == text:
        print(f"gen_ptx.py: {OUTPUT} is up to date")
        return 0
    diff = list(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            text.splitlines(keepends=True),
            f"{OUTPUT} (committed)",
            f"{OUTPUT} (generated from {SOURCE})",
        )
    )
    shown = 60
    sys.stdout.writelines(diff[:shown])
    if len(diff) > shown:
        print(f"... ({len(diff) - shown} more diff lines)")
    print(
        f"gen_ptx.py: {OUTPUT} is stale: run `python3 scripts/gen_ptx.py` and commit the result",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
