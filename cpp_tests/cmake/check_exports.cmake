# ctest script: the installed libdpcoord exports only dp_* symbols, all of the C API, and
# carries the SONAME the package promises (libdpcoord.so.0.3 for 0.3.x); the SONAME link and
# the .so link sit next to it.
#
#   cmake -DLIB=<imported location> -DSONAME=<IMPORTED_SONAME> -DNM=<nm> -DREADELF=<readelf>
#         -P check_exports.cmake
cmake_minimum_required(VERSION 3.16...3.31)
foreach(var LIB SONAME NM READELF)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "check_exports.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT EXISTS "${LIB}")
  message(FATAL_ERROR "${LIB} does not exist")
endif()

execute_process(COMMAND "${NM}" -D --defined-only "${LIB}"
                OUTPUT_VARIABLE nm_out RESULT_VARIABLE rc ERROR_VARIABLE nm_err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${NM} -D --defined-only ${LIB} failed (${rc}): ${nm_err}")
endif()
string(REPLACE "\n" ";" lines "${nm_out}")
set(exported "")
set(stray "")
foreach(line IN LISTS lines)
  # "<address> <type> <name>"; version-definition entries (type A) are not symbols of ours.
  if(line MATCHES "^[0-9a-fA-F]* *([A-Za-z]) ([^ ]+)$")
    set(type "${CMAKE_MATCH_1}")
    set(name "${CMAKE_MATCH_2}")
    if(type STREQUAL "A")
      continue()
    endif()
    if(name MATCHES "^dp_")
      list(APPEND exported "${name}")
    else()
      list(APPEND stray "${type} ${name}")
    endif()
  endif()
endforeach()
if(stray)
  message(FATAL_ERROR "${LIB} exports symbols outside the C API (dp_*): ${stray}")
endif()
# dp_batch_request_init and dp_batch_result_init are the header's inlines over these *_sized
# functions (they pass the caller's sizeof), so they are not in the library.
set(api dp_batch_request_init_sized dp_batch_result_init_sized dp_make_record dp_decide_batch
        dp_decide_options_init_sized dp_decide_batch_with_options dp_make_ubatch_slices
        dp_coordinate_batch dp_release dp_status_string dp_last_error dp_version)
foreach(inline dp_batch_request_init dp_batch_result_init dp_decide_options_init)
  if(inline IN_LIST exported)
    message(FATAL_ERROR "${LIB} exports ${inline}, which must be the header's inline")
  endif()
endforeach()
foreach(fn IN LISTS api)
  if(NOT fn IN_LIST exported)
    message(FATAL_ERROR "${LIB} does not export ${fn} (exports: ${exported})")
  endif()
endforeach()

execute_process(COMMAND "${READELF}" -d "${LIB}"
                OUTPUT_VARIABLE dyn RESULT_VARIABLE rc ERROR_VARIABLE dyn_err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${READELF} -d ${LIB} failed (${rc}): ${dyn_err}")
endif()
if(NOT dyn MATCHES "\\(SONAME\\)[^\n]*\\[([^]]*)\\]")
  message(FATAL_ERROR "${LIB} has no SONAME")
endif()
if(NOT CMAKE_MATCH_1 STREQUAL SONAME)
  message(FATAL_ERROR "${LIB} has SONAME ${CMAKE_MATCH_1}, expected ${SONAME}")
endif()

get_filename_component(dir "${LIB}" DIRECTORY)
foreach(link "${SONAME}" libdpcoord.so)
  if(NOT IS_SYMLINK "${dir}/${link}")
    message(FATAL_ERROR "${dir}/${link} is missing or not a symbolic link")
  endif()
  get_filename_component(target "${dir}/${link}" REALPATH)
  get_filename_component(real "${LIB}" REALPATH)
  if(NOT target STREQUAL real)
    message(FATAL_ERROR "${dir}/${link} resolves to ${target}, not ${real}")
  endif()
endforeach()

list(LENGTH exported count)
message(STATUS "${LIB}: SONAME ${SONAME}, ${count} symbols, all dp_*: ${exported}")
