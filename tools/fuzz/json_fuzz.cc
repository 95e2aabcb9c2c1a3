// libFuzzer target: the JSON syntax check (workers/common/json_syntax.h) against
// nlohmann::json::accept, the checker it replaced. Built with -DFUZZ=ON (clang); run by
// tools/test.sh. Checked: both give the same verdict on every input without a NUL byte; with
// one, this check refuses (nlohmann takes a NUL between tokens for the end of the text and ignores
// what follows it, so it accepts "{}\0junk"; Go's encoding/json, upstream's, refuses that too).
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include <nlohmann/json.hpp>

#include "workers/common/json_syntax.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  bool valid = aa::json::isValid(text);
  if (text.find('\0') != std::string_view::npos) {
    if (valid) abort();
  } else if (valid != nlohmann::json::accept(text)) {
    abort();
  }
  return 0;
}
