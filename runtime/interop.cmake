# fjord_interop: the formats fjord shares with other tools: safetensors and Hugging Face GPT-2,
# llm.c checkpoints, tokenizers (the interface, bytes, GPT-2 BPE files), TensorBoard event files. It depends on
# fjord_common only and takes the parameter layout as plain data (runtime/gpt2_params.h), so it
# builds and is tested apart from the model and trainer. Included from runtime/CMakeLists.txt.
add_library(fjord_interop STATIC
  ${CMAKE_CURRENT_LIST_DIR}/json.h ${CMAKE_CURRENT_LIST_DIR}/json.cc
  ${CMAKE_CURRENT_LIST_DIR}/file_util.h ${CMAKE_CURRENT_LIST_DIR}/file_util.cc
  ${CMAKE_CURRENT_LIST_DIR}/safetensors.h ${CMAKE_CURRENT_LIST_DIR}/safetensors.cc
  ${CMAKE_CURRENT_LIST_DIR}/gpt2_params.h ${CMAKE_CURRENT_LIST_DIR}/gpt2_params.cc
  ${CMAKE_CURRENT_LIST_DIR}/hf_gpt2.h ${CMAKE_CURRENT_LIST_DIR}/hf_gpt2.cc
  ${CMAKE_CURRENT_LIST_DIR}/llmc_checkpoint.h ${CMAKE_CURRENT_LIST_DIR}/llmc_checkpoint.cc
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer.h ${CMAKE_CURRENT_LIST_DIR}/tokenizer.cc
  ${CMAKE_CURRENT_LIST_DIR}/bpe_tokenizer.h ${CMAKE_CURRENT_LIST_DIR}/bpe_tokenizer.cc
  ${CMAKE_CURRENT_LIST_DIR}/tensorboard.h ${CMAKE_CURRENT_LIST_DIR}/tensorboard.cc)
find_package(OpenSSL REQUIRED)
target_link_libraries(fjord_interop PUBLIC fjord_common PRIVATE OpenSSL::Crypto)
