// Process titles (proc_title.h).
#include "ipc/runtime/proc_title.h"

#include <sys/prctl.h>

#include <string>

namespace aa {
void setProcessTitle(std::string_view title) {
  std::string t(title.substr(0, 15));
  prctl(PR_SET_NAME, t.c_str(), 0, 0, 0);
}
}  // namespace aa
