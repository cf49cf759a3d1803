# ctest fixtures: files produced before the tests that read them.
#
# reference_fixtures (fixture torch_ref): the PyTorch reference
# (tools/reference/llama_ref.py) writes random HF models, token batches and their
# reference logits, and stories260K reference logits, under ${RQ_TEST_OUT}/ref.
# It needs the system interpreter with Debian's python3-torch (not a pyenv or venv
# python: those rarely have torch 1.13+ and numpy together). Without torch it exits
# 77 (skipped) outside CI and fails under CI=true; the tests that require it then
# find no fixture and skip or fail the same way. ctest passes its own environment
# through, so RILQ_DATA (for stories260K) reaches the script unchanged.
#
# `ctest -R test_parity` runs the fixture first automatically.

set(RQ_REF_PYTHON /usr/bin/python3)
set(RQ_REF_DIR ${RQ_TEST_OUT}/ref)

if(EXISTS ${RQ_REF_PYTHON})
  add_test(NAME reference_fixtures
    COMMAND ${RQ_REF_PYTHON} ${CMAKE_SOURCE_DIR}/tools/reference/llama_ref.py fixtures ${RQ_REF_DIR}
    WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
else()
  # No system python at all: same skip/fail rule as a missing torch.
  add_test(NAME reference_fixtures
    COMMAND sh -c "echo '${RQ_REF_PYTHON} not found (install python3-torch)' >&2; \
case \"$CI\" in true|1) exit 1;; esac; exit 77")
endif()
set_tests_properties(reference_fixtures PROPERTIES
  FIXTURES_SETUP torch_ref
  SKIP_RETURN_CODE 77
  LABELS "fast"
  TIMEOUT 600)

if(TEST test_parity)
  set_tests_properties(test_parity PROPERTIES FIXTURES_REQUIRED torch_ref)
endif()
