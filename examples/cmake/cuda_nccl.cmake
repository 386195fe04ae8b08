# The CUDA runtime and NCCL for the GPU examples, found as cpp_tests/gpu does it, with the same
# variables (no nvcc: the examples are plain C++ over the runtime API and nccl.h):
#   CUDA runtime: -DDPCOORD_CUDA_ROOT=<dir with include/cuda_runtime.h and lib/libcudart.so[.12]>
#                 (e.g. pip's nvidia-cuda-runtime-cu12: <site>/nvidia/cuda_runtime; default
#                 $DPCOORD_CUDA_ROOT), else find_package(CUDAToolkit) (/usr/local/cuda, or
#                 -DCUDAToolkit_ROOT=...). CUDA's crt/host_defines.h and nv/target are looked for
#                 beside it (pip: nvidia-cuda-nvcc-cu12 and nvidia-cuda-cccl-cu12 12.9.27 in the
#                 same --target), or in -DDPCOORD_CUDA_EXTRA_INCLUDE_DIRS=<dirs>.
#   NCCL:         -DNCCL_ROOT=<dir with include/nccl.h and lib/libnccl.so[.2]> (default
#                 $NCCL_ROOT), else the CUDA toolkit's directories, else the system.
# Defines dpcoord_examples_nccl, an imported target carrying NCCL and the CUDA runtime. Stops
# with a message naming DPCOORD_EXAMPLE_GPU when something is missing.
set(_off "or pass -DDPCOORD_EXAMPLE_GPU=OFF to build the examples without the GPU ones")

set(DPCOORD_CUDA_ROOT "$ENV{DPCOORD_CUDA_ROOT}" CACHE PATH
    "Directory with include/cuda_runtime.h and lib/libcudart.so[.12] (empty: find_package(CUDAToolkit))")
set(DPCOORD_CUDA_EXTRA_INCLUDE_DIRS "" CACHE STRING
    "More directories for CUDA's headers (crt/host_defines.h, nv/target), a ;-list")
if(DPCOORD_CUDA_ROOT)
  find_path(DPCOORD_CUDART_INCLUDE_DIR cuda_runtime.h
            PATHS "${DPCOORD_CUDA_ROOT}/include" NO_DEFAULT_PATH)
  # pip's wheel ships only libcudart.so.12 (no unversioned link), hence the explicit names.
  find_library(DPCOORD_CUDART_LIBRARY NAMES cudart libcudart.so.12 libcudart.so.13
               PATHS "${DPCOORD_CUDA_ROOT}/lib" "${DPCOORD_CUDA_ROOT}/lib64" NO_DEFAULT_PATH)
  if(NOT DPCOORD_CUDART_INCLUDE_DIR OR NOT DPCOORD_CUDART_LIBRARY)
    message(FATAL_ERROR "dpcoord examples: DPCOORD_CUDA_ROOT=${DPCOORD_CUDA_ROOT} lacks "
                        "include/cuda_runtime.h or lib/libcudart.so[.12]; fix it, ${_off}")
  endif()
  set(_cudart "${DPCOORD_CUDART_LIBRARY}")
  set(_cuda_includes "${DPCOORD_CUDART_INCLUDE_DIR}")
  get_filename_component(_cuda_lib_dir "${DPCOORD_CUDART_LIBRARY}" DIRECTORY)
else()
  find_package(CUDAToolkit)
  if(NOT CUDAToolkit_FOUND)
    message(FATAL_ERROR "dpcoord examples: the GPU examples need the CUDA runtime, and none was "
                        "found. Pass -DDPCOORD_CUDA_ROOT=<dir> (e.g. pip install "
                        "nvidia-cuda-runtime-cu12, then <site>/nvidia/cuda_runtime) or "
                        "-DCUDAToolkit_ROOT=<toolkit>, ${_off}")
  endif()
  set(_cudart CUDA::cudart)
  set(_cuda_includes ${CUDAToolkit_INCLUDE_DIRS})
  set(_cuda_lib_dir "${CUDAToolkit_LIBRARY_DIR}")
endif()
set(_hints ${DPCOORD_CUDA_EXTRA_INCLUDE_DIRS})
foreach(_dir IN LISTS _cuda_includes)
  get_filename_component(_pip_nvidia "${_dir}/../.." ABSOLUTE)
  list(APPEND _hints "${_dir}" "${_dir}/cccl" "${_pip_nvidia}/cuda_nvcc/include"
       "${_pip_nvidia}/cuda_cccl/include")
endforeach()
find_path(DPCOORD_CUDA_CRT_INCLUDE_DIR crt/host_defines.h HINTS ${_hints} NO_DEFAULT_PATH)
find_path(DPCOORD_CUDA_NV_TARGET_INCLUDE_DIR nv/target HINTS ${_hints} NO_DEFAULT_PATH)
if(NOT DPCOORD_CUDA_CRT_INCLUDE_DIR OR NOT DPCOORD_CUDA_NV_TARGET_INCLUDE_DIR)
  message(FATAL_ERROR "dpcoord examples: CUDA's headers are incomplete beside ${_cuda_includes} "
                      "(crt/host_defines.h: ${DPCOORD_CUDA_CRT_INCLUDE_DIR}, nv/target: "
                      "${DPCOORD_CUDA_NV_TARGET_INCLUDE_DIR}). With pip's wheels install "
                      "nvidia-cuda-nvcc-cu12 and nvidia-cuda-cccl-cu12 12.9.27 into the same "
                      "--target, or pass -DDPCOORD_CUDA_EXTRA_INCLUDE_DIRS=<dirs>, ${_off}")
endif()

set(NCCL_ROOT "$ENV{NCCL_ROOT}" CACHE PATH "Directory with include/nccl.h and lib/libnccl.so[.2]")
if(NCCL_ROOT)
  # An explicit root is searched alone first, so a system NCCL never shadows it.
  find_path(DPCOORD_NCCL_INCLUDE_DIR nccl.h PATHS "${NCCL_ROOT}/include" NO_DEFAULT_PATH)
  find_library(DPCOORD_NCCL_LIBRARY NAMES nccl libnccl.so.2
               PATHS "${NCCL_ROOT}/lib" "${NCCL_ROOT}/lib64" NO_DEFAULT_PATH)
endif()
find_path(DPCOORD_NCCL_INCLUDE_DIR nccl.h HINTS ${_cuda_includes})
find_library(DPCOORD_NCCL_LIBRARY NAMES nccl libnccl.so.2 HINTS "${_cuda_lib_dir}")
if(NOT DPCOORD_NCCL_INCLUDE_DIR OR NOT DPCOORD_NCCL_LIBRARY)
  message(FATAL_ERROR "dpcoord examples: the GPU examples need NCCL, and none was found "
                      "(nccl.h: ${DPCOORD_NCCL_INCLUDE_DIR}, libnccl: ${DPCOORD_NCCL_LIBRARY}). "
                      "Pass -DNCCL_ROOT=<dir> (e.g. pip install nvidia-nccl-cu12, then "
                      "<site>/nvidia/nccl), ${_off}")
endif()
message(STATUS "dpcoord examples: CUDA runtime ${_cudart}, NCCL ${DPCOORD_NCCL_LIBRARY}")

add_library(dpcoord_examples_nccl UNKNOWN IMPORTED)
set_target_properties(dpcoord_examples_nccl PROPERTIES IMPORTED_LOCATION "${DPCOORD_NCCL_LIBRARY}")
# nccl.h includes cuda_runtime.h. Imported include directories are system ones: CUDA's and
# NCCL's headers are not held to the examples' warning flags.
target_include_directories(dpcoord_examples_nccl INTERFACE "${DPCOORD_NCCL_INCLUDE_DIR}"
  ${_cuda_includes} "${DPCOORD_CUDA_CRT_INCLUDE_DIR}" "${DPCOORD_CUDA_NV_TARGET_INCLUDE_DIR}")
target_link_libraries(dpcoord_examples_nccl INTERFACE "${_cudart}")
