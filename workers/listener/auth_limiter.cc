// Authentication admission (auth_limiter.h).
#include "workers/listener/auth_limiter.h"

#include <algorithm>
#include <vector>

namespace aa {

const char* describe(AuthLimiter::Verdict v) {
  switch (v) {
    case AuthLimiter::Verdict::kAdmit:
      return "admitted";
    case AuthLimiter::Verdict::kSourcePending:
      return "source-pending";
    case AuthLimiter::Verdict::kSourceFailures:
      return "source-failures";
    case AuthLimiter::Verdict::kBusy:
      return "busy";
  }
  return "?";
}

AuthLimiter::Source& AuthLimiter::source(const std::string& key, Clock::time_point now) {
  auto it = sources_.find(key);
  if (it == sources_.end()) {
    if (sources_.size() >= limits_.maxSources) forget(now);
    it = sources_.emplace(key, Source{0, limits_.failureBurst, now}).first;
  }
  Source& s = it->second;
  double seconds = std::chrono::duration<double>(now - s.at).count();
  if (seconds > 0) {
    s.tokens = std::min(limits_.failureBurst, s.tokens + seconds * limits_.failureRate);
    s.at = now;
  }
  return s;
}

// An entry with nothing pending and a full bucket holds nothing a new one would not: those go
// first; if every entry is in use, the least penalised half. A flood of new addresses cannot grow
// the table without bound.
void AuthLimiter::forget(Clock::time_point now) {
  for (auto it = sources_.begin(); it != sources_.end();) {
    const Source& s = it->second;
    double seconds = std::chrono::duration<double>(now - s.at).count();
    if (s.pending == 0 && s.tokens + seconds * limits_.failureRate >= limits_.failureBurst) {
      it = sources_.erase(it);
    } else {
      ++it;
    }
  }
  if (sources_.size() < limits_.maxSources) return;
  std::vector<std::pair<double, std::string>> byTokens;
  for (const auto& [k, s] : sources_) {
    if (s.pending == 0) byTokens.emplace_back(s.tokens, k);
  }
  std::sort(byTokens.begin(), byTokens.end());
  for (size_t i = byTokens.size() / 2; i < byTokens.size(); ++i) sources_.erase(byTokens[i].second);
}

AuthLimiter::Verdict AuthLimiter::admit(const std::string& key, Clock::time_point now) {
  if (limits_.maxPending > 0 && pending_ >= limits_.maxPending) return Verdict::kBusy;
  if (!key.empty()) {
    Source& s = source(key, now);
    if (limits_.failureBurst > 0 && s.tokens < 1) return Verdict::kSourceFailures;
    if (limits_.maxPendingPerSource > 0 && s.pending >= limits_.maxPendingPerSource) {
      return Verdict::kSourcePending;
    }
    s.pending++;
  }
  ++pending_;
  return Verdict::kAdmit;
}

void AuthLimiter::done(const std::string& key, bool failed, Clock::time_point now) {
  if (pending_ > 0) --pending_;
  if (key.empty()) return;
  Source& s = source(key, now);
  if (s.pending > 0) s.pending--;
  if (failed && limits_.failureBurst > 0) s.tokens = std::max(-limits_.failureBurst, s.tokens - 1);
}

}  // namespace aa
