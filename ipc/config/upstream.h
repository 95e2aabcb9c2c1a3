// Upstream argocd-agent's settings (its cmd/argocd-agent flags and the variables its packages
// read), so that one this implementation does not support is named instead of ignored: a flag is
// refused with a message saying it is upstream's (and, for the Kubernetes-secret flags, which
// file-based flag to use), and a set environment variable becomes a start-up warning. The table
// lists all of upstream's settings; those that our option table implements are filtered out at run
// time, so a flag implemented later stops being reported without touching this list.
#pragma once

#include <string_view>
#include <vector>

#include "ipc/config/config.h"

namespace aa::upstream {

struct Setting {
  std::string_view flag;     // without "--"; "" for a variable that has no flag
  std::string_view env;      // "" for a flag that has no variable
  std::string_view instead;  // what to use here instead ("" if nothing)
};

// Every upstream setting of `side`.
const std::vector<Setting>& settings(Side side);

}  // namespace aa::upstream
