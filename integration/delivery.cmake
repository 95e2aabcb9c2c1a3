# Delivery, wire-compatibility and connection-management integration tests (real proxies: nginx,
# HAProxy). Included at the end of integration/CMakeLists.txt; same conventions as the tests there.
# All run alone: they kill proxies, freeze workers and measure stream lifetimes against timers.
set(AA_IT_DELIVERY_TESTS
  delivery_faults
  bad_events
  idle_proxy
  keepalive
  dead_peer
  env_defaults)

foreach(name IN LISTS AA_IT_DELIVERY_TESTS)
  add_test(NAME integration.${name}
           COMMAND ${AA_IT_PYTHON} -m unittest -v test_${name}
           WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR})
  set_tests_properties(integration.${name} PROPERTIES
    ENVIRONMENT "AA_BUILD_DIR=${CMAKE_BINARY_DIR};PYTHONPATH=${AA_IT_PB_DIR}:${CMAKE_CURRENT_SOURCE_DIR};PYTHONDONTWRITEBYTECODE=1"
    LABELS integration
    TIMEOUT 300
    RUN_SERIAL TRUE)
endforeach()
