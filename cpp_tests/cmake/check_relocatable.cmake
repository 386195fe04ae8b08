# ctest script: the installed package still works after its prefix is copied elsewhere.
# Copies the package's files (library and links, header, CMake package files) into a fresh
# directory with the same layout, configures and builds package/consumer against the copy
# only, and runs it: every path must resolve inside the copy.
#
#   cmake -DPREFIX=<dpcoord_PREFIX> -DLIBRARY=<imported location> -DINCLUDE_DIR=<dir>
#         -DCONFIG_DIR=<dpcoord_DIR> -DVERSION=<x.y.z> -DWORK=<scratch dir>
#         -DCONSUMER=<source dir> -DGENERATOR=<cmake generator> -DC_COMPILER=<cc>
#         -P check_relocatable.cmake
cmake_minimum_required(VERSION 3.16...3.31)
foreach(var PREFIX LIBRARY INCLUDE_DIR CONFIG_DIR VERSION WORK CONSUMER GENERATOR C_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "check_relocatable.cmake: -D${var}=... is required")
  endif()
endforeach()

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGN}")
    message(FATAL_ERROR "failed (${rc}): ${cmd}\n${out}")
  endif()
  set(run_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK}")
set(root "${WORK}/moved-prefix")

# Same relative layout as the original prefix.
get_filename_component(lib_dir "${LIBRARY}" DIRECTORY)
file(RELATIVE_PATH rel_lib "${PREFIX}" "${lib_dir}")
file(RELATIVE_PATH rel_inc "${PREFIX}" "${INCLUDE_DIR}")
file(RELATIVE_PATH rel_cfg "${PREFIX}" "${CONFIG_DIR}")
file(GLOB libs "${lib_dir}/libdpcoord.so*")
file(MAKE_DIRECTORY "${root}/${rel_lib}" "${root}/${rel_inc}" "${root}/${rel_cfg}")
file(COPY ${libs} DESTINATION "${root}/${rel_lib}")  # links are copied as links
file(COPY "${INCLUDE_DIR}/dpcoord.h" DESTINATION "${root}/${rel_inc}")
file(GLOB cfg "${CONFIG_DIR}/*.cmake")
file(COPY ${cfg} DESTINATION "${root}/${rel_cfg}")
get_filename_component(root "${root}" REALPATH)

run("${CMAKE_COMMAND}" -S "${CONSUMER}" -B "${WORK}/build" -G "${GENERATOR}"
    "-DCMAKE_C_COMPILER=${C_COMPILER}" "-DCMAKE_PREFIX_PATH=${root}"
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF
    "-DEXPECTED_ROOT=${root}" "-DEXPECTED_VERSION=${VERSION}")
run("${CMAKE_COMMAND}" --build "${WORK}/build")
run("${WORK}/build/consumer")
message(STATUS "${run_output}")
if(NOT run_output MATCHES "loaded: ([^\n]*)")
  message(FATAL_ERROR "the consumer did not say which library it loaded")
endif()
get_filename_component(loaded "${CMAKE_MATCH_1}" REALPATH)
string(FIND "${loaded}" "${root}/" at)
if(NOT at EQUAL 0)
  message(FATAL_ERROR "the consumer loaded ${loaded}, not the relocated copy under ${root}")
endif()
file(REMOVE_RECURSE "${WORK}")
message(STATUS "relocated package OK: ${root}")
