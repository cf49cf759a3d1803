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

# reference_grad_fixtures (fixture torch_ref_grad): the same script's
# grad-fixtures subcommand writes, under ${RQ_TEST_OUT}/ref_grad, the random HF
# model again (its own copy, so this fixture does not depend on the other) and
# the loss, adapter gradients (LoRA and QA-LoRA, torch autograd in float64 and
# float32) and one Adam step for that model and for stories260K (with RILQ_DATA).
# Same interpreter and the same skip/fail rule as reference_fixtures.
#
# `ctest -R test_parity_grad` runs it first automatically.
if(EXISTS ${RQ_REF_PYTHON})
  add_test(NAME reference_grad_fixtures
    COMMAND ${RQ_REF_PYTHON} ${CMAKE_SOURCE_DIR}/tools/reference/llama_ref.py grad-fixtures ${RQ_TEST_OUT}/ref_grad
    WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
else()
  add_test(NAME reference_grad_fixtures
    COMMAND sh -c "echo '${RQ_REF_PYTHON} not found (install python3-torch)' >&2; \
case \"$CI\" in true|1) exit 1;; esac; exit 77")
endif()
set_tests_properties(reference_grad_fixtures PROPERTIES
  FIXTURES_SETUP torch_ref_grad
  SKIP_RETURN_CODE 77
  LABELS "fast"
  TIMEOUT 600)

if(TEST test_parity_grad)
  set_tests_properties(test_parity_grad PROPERTIES FIXTURES_REQUIRED torch_ref_grad)
endif()
