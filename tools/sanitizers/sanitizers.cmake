# Run-time options of the sanitizer builds (-DAA_SANITIZE=address|thread, see CMakeLists.txt), as
# test environments, so that `ctest` in build-asan/ or build-tsan/ checks exactly as CI does.
#
# Unit tests (AA_SANITIZER_UNIT_ENV): one process; any report fails the test by its exit status,
# and the report is in the test's output.
# Integration tests (aa_sanitizer_integration_test): many processes, and a worker's exit status
# is the supervisor's business (a worker that aborts is a "crash" and is restarted, which a test
# may not notice; its stderr goes to the supervisor's log in a temp directory that is deleted).
# So every report goes to a file, <build>/sanitizer-reports/<test name>.<pid>, and the CTest
# fixture test sanitizer.reports, which runs after them, fails when there is any.
#
# Leak checking. Unit tests: on, and a leak fails the test (abort_on_error makes it an abort).
# Integration tests: off (detect_leaks=0), for three reasons. The exit codes of the supervisor and
# its workers mean something (0 orderly stop, 1 restart, 78 configuration error, never
# restarted) and LeakSanitizer replaces them (23, or an abort) when it finds a leak. Its check at
# exit runs in a tracer task cloned from the process, which the tests see as a process started by
# it (test_bad_input asserts that a rejected configuration starts none). And most of the
# processes there end by SIGKILL (watchdog, PDEATHSIG, crash tests), which no leak check survives,
# so it would check a sample at best. Leaks are therefore checked where one process runs the code
# and exits normally: the unit tests.
#
# allow_user_segv_handler=0: ipc/runtime/crash.cc installs its own SIGSEGV/SIGBUS/SIGFPE
# handler (backtrace, re-raise); without this ASan's handler would be replaced, and a wild access
# in a worker would be only a logged crash instead of an ASan report. SIGABRT stays ours: the
# containment tests abort the auth worker on purpose and expect "signal ABRT (crash)", and an
# ASan/UBSan report aborts (abort_on_error=1) after it is written, so it is seen both ways.

set(AA_SANITIZER_UNIT_ENV)
set(AA_SANITIZER_REPORT_DIR ${CMAKE_BINARY_DIR}/sanitizer-reports)

if(AA_SANITIZE STREQUAL "address")
  set(_asan "abort_on_error=1:halt_on_error=1:detect_leaks=1:allow_user_segv_handler=0")
  set(_asan "${_asan}:strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=1")
  set(_ubsan "halt_on_error=1:abort_on_error=1:print_stacktrace=1")
  list(APPEND AA_SANITIZER_UNIT_ENV "ASAN_OPTIONS=${_asan}" "UBSAN_OPTIONS=${_ubsan}")
  string(REPLACE "detect_leaks=1" "detect_leaks=0" AA_SANITIZER_INTEGRATION_ASAN "${_asan}")
  set(AA_SANITIZER_INTEGRATION_UBSAN "${_ubsan}")
elseif(AA_SANITIZE STREQUAL "thread")
  set(_tsan "halt_on_error=1:second_deadlock_stack=1")
  set(_tsan "${_tsan}:suppressions=${CMAKE_SOURCE_DIR}/tools/sanitizers/tsan.supp")
  list(APPEND AA_SANITIZER_UNIT_ENV "TSAN_OPTIONS=${_tsan}")
  # Integration runs: whole processes around Debian's uninstrumented grpc, whose internal
  # hand-overs (buffers it fills on its threads and hands over through its own futexes) TSan
  # cannot see; ignore the accesses those libraries make through interceptors (memcpy, realloc,
  # epoll...), so that what is checked is our threads' use of each other's data.
  set(AA_SANITIZER_INTEGRATION_TSAN "${_tsan}:ignore_noninstrumented_modules=1")
endif()

# Called for every integration test: in the ASan build, its environment (reports to
# <dir>/<test name>.<pid>) and the fixture that fails when any report was written.
function(aa_sanitizer_integration_test name)
  if(AA_SANITIZE STREQUAL "address")
    set_property(TEST ${name} APPEND PROPERTY ENVIRONMENT
      "ASAN_OPTIONS=${AA_SANITIZER_INTEGRATION_ASAN}:log_path=${AA_SANITIZER_REPORT_DIR}/${name}"
      "UBSAN_OPTIONS=${AA_SANITIZER_INTEGRATION_UBSAN}:log_path=${AA_SANITIZER_REPORT_DIR}/${name}")
    set_property(TEST ${name} APPEND PROPERTY FIXTURES_REQUIRED sanitizer_reports)
  elseif(AA_SANITIZE STREQUAL "thread")
    # The TSan stage runs only the integration tests labelled tsan (the listener's threads).
    set_property(TEST ${name} APPEND PROPERTY ENVIRONMENT
      "TSAN_OPTIONS=${AA_SANITIZER_INTEGRATION_TSAN}:log_path=${AA_SANITIZER_REPORT_DIR}/${name}")
    set_property(TEST ${name} APPEND PROPERTY FIXTURES_REQUIRED sanitizer_reports)
  endif()
endfunction()

if(AA_SANITIZE STREQUAL "address" OR AA_SANITIZE STREQUAL "thread")
  # Setup empties the directory (world-writable and sticky: test_bad_input runs argocd-agentctl as
  # uid 65534); cleanup runs after every test that requires it and fails if any report is there.
  add_test(NAME sanitizer.reports.clear
           COMMAND /bin/sh ${CMAKE_SOURCE_DIR}/tools/sanitizers/check_reports.sh --clear
                   ${AA_SANITIZER_REPORT_DIR})
  add_test(NAME sanitizer.reports
           COMMAND /bin/sh ${CMAKE_SOURCE_DIR}/tools/sanitizers/check_reports.sh
                   ${AA_SANITIZER_REPORT_DIR})
  set_tests_properties(sanitizer.reports.clear PROPERTIES FIXTURES_SETUP sanitizer_reports
                       LABELS "integration;tsan")
  set_tests_properties(sanitizer.reports PROPERTIES FIXTURES_CLEANUP sanitizer_reports
                       LABELS "integration;tsan")
endif()
