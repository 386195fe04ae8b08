# Runs a program and checks both its exit status and its output (ctest's PASS_REGULAR_EXPRESSION
# alone ignores the exit status):
#
#   cmake -DPROGRAM=<path> "-DARGS=a;b" -DSTATUS=<expected exit status> -DEXPECT=<regex>
#         -P expect.cmake
#
# A crash, another exit status, or output without EXPECT fails the test.
execute_process(COMMAND "${PROGRAM}" ${ARGS}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}${err}")
if(NOT rc STREQUAL "${STATUS}")
  message(FATAL_ERROR "${PROGRAM} exited with '${rc}', expected ${STATUS}")
endif()
if(NOT "${out}${err}" MATCHES "${EXPECT}")
  message(FATAL_ERROR "the output of ${PROGRAM} lacks '${EXPECT}'")
endif()
