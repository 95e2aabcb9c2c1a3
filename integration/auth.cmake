# Authentication and service-mesh integration tests (included at the end of CMakeLists.txt):
# header/XFCC auth behind a real mTLS sidecar (nginx), exposure rules, mTLS client certificates,
# containment of hostile identity input and of auth-worker crashes. Helpers: mesh.py.
# Every test starts principals/agents/nginx on loopback ports and kills workers: run serially.
set(AA_IT_AUTH_TESTS
  mesh_sidecar
  exposure
  mtls
  auth_containment)

foreach(name IN LISTS AA_IT_AUTH_TESTS)
  add_test(NAME integration.${name}
           COMMAND ${AA_IT_PYTHON} -m unittest -v test_${name}
           WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR})
  set_tests_properties(integration.${name} PROPERTIES
    ENVIRONMENT "AA_BUILD_DIR=${CMAKE_BINARY_DIR};PYTHONPATH=${AA_IT_PB_DIR}:${CMAKE_CURRENT_SOURCE_DIR};PYTHONDONTWRITEBYTECODE=1"
    LABELS integration
    TIMEOUT 300
    RUN_SERIAL TRUE)
endforeach()
