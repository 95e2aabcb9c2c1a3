// The `userpass:<file>` credential database (wire spec §2.4): lines of `name:bcrypt-hash`, `#` and
// `//` comments, names DNS-1123 labels, hashes `$2a$/$2b$/$2x$/$2y$NN$...`; invalid lines are
// skipped with a warning. Verification uses libcrypt's bcrypt; unknown users are compared against
// a dummy hash so that timing does not reveal which names exist. Runs in the auth worker only.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace aa::userpass {

struct ParseResult {
  std::map<std::string, std::string> users;  // name -> hash
  std::vector<std::string>
      warnings;  // one per skipped line, naming the line number; never the hash
};

// Caps: file 1 MiB, line 4 KiB, name 63 chars (longer input -> warning/skip, never a crash).
ParseResult parse(std::string_view fileContents);

class Database {
 public:
  explicit Database(std::map<std::string, std::string> users);
  // Constant-ish time with respect to whether `name` exists. Secrets over 1 KiB are refused.
  bool verify(std::string_view name, std::string_view secret) const;
  size_t size() const { return users_.size(); }

 private:
  std::map<std::string, std::string> users_;
};

// A fresh $2b$ bcrypt hash of `password` with `cost` (4..31). Throws std::runtime_error.
std::string hashPassword(std::string_view password, int cost = 10);

}  // namespace aa::userpass
