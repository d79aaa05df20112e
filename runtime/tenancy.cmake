# fjord_tenancy: the residency gates and their records (docs/SOVEREIGNTY.md): node identity and
# policy checks, data manifests, checkpoint sealing (AES-256-GCM via OpenSSL) and the hash-chained
# audit log. It depends on common, proto, collectives (the identity gather) and interop (JSON, file
# writes) only, so it builds and is tested apart from the model and trainer; fjord_runtime links it
# for the loader, `fjord prep` and job-spec validation. Included from runtime/CMakeLists.txt.
find_package(OpenSSL 3 REQUIRED COMPONENTS Crypto)
add_library(fjord_tenancy STATIC
  ${CMAKE_CURRENT_LIST_DIR}/crypto.h ${CMAKE_CURRENT_LIST_DIR}/crypto.cc
  ${CMAKE_CURRENT_LIST_DIR}/audit.h ${CMAKE_CURRENT_LIST_DIR}/audit.cc
  ${CMAKE_CURRENT_LIST_DIR}/manifest.h ${CMAKE_CURRENT_LIST_DIR}/manifest.cc
  ${CMAKE_CURRENT_LIST_DIR}/tenancy.h ${CMAKE_CURRENT_LIST_DIR}/tenancy.cc)
target_link_libraries(fjord_tenancy PUBLIC fjord_common fjord_proto fjord_collectives fjord_interop
                      PRIVATE OpenSSL::Crypto)
# The node's own files (node identity, node settings) are in FJORD_SYSCONFDIR (top-level CMakeLists.txt).
target_compile_definitions(fjord_tenancy PRIVATE FJORD_SYSCONFDIR="${FJORD_SYSCONFDIR}")
