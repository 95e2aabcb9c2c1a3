// Agent-name rules (wire spec §2.6): DNS-1123 labels for identities from mtls, header and the
// userpass database; DNS-1123 subdomains for any authenticated stream.
#pragma once

#include <string_view>

namespace aa {
bool isDnsLabel(std::string_view s);      // [a-z0-9]([-a-z0-9]*[a-z0-9])?, 1..63
bool isDnsSubdomain(std::string_view s);  // labels joined by '.', 1..253
}  // namespace aa
