// Process titles so that `ps` names each process by role: the kernel's comm (15 chars, shown by
// `ps -o comm`, top, /proc/<pid>/comm). The full command line already reads
// "argocd-agent worker <side> <role> ...".
#pragma once

#include <string_view>

namespace aa {
// e.g. setProcessTitle("aa-listener").
void setProcessTitle(std::string_view title);
}  // namespace aa
