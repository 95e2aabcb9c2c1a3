// Admission: the front door's connection limits, as a table of steps.
#include "workers/listener/admission.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace aa {
namespace {

struct Step {
  enum Op { kAdmit, kHandshakeEnded, kAuthenticated, kClosedUnauth, kClosedAuth } op;
  std::string source;
  bool tls = true;
  double coin = 0.99;
  Refusal want = Refusal::kNone;
};

struct Case {
  const char* name;
  AdmissionLimits limits;
  std::vector<Step> steps;
};

void run(const Case& c) {
  Admission a(c.limits);
  for (size_t i = 0; i < c.steps.size(); ++i) {
    const Step& s = c.steps[i];
    switch (s.op) {
      case Step::kAdmit:
        EXPECT_EQ(a.admit(s.source, s.tls, s.coin), s.want)
            << c.name << ", step " << i << ": " << describe(a.admit(s.source, s.tls, s.coin));
        break;
      case Step::kHandshakeEnded:
        a.handshakeEnded();
        break;
      case Step::kAuthenticated:
        a.authenticated(s.source);
        break;
      case Step::kClosedUnauth:
        a.closed(s.source, false);
        break;
      case Step::kClosedAuth:
        a.closed(s.source, true);
        break;
    }
  }
}

// Note: a refused admit() in EXPECT_EQ's message is evaluated again only on failure.
TEST(Admission, Table) {
  using S = Step;
  const std::vector<Case> cases = {
      {"no limits admit everything",
       {},
       {{S::kAdmit, "a"}, {S::kAdmit, "a"}, {S::kAdmit, "b", false}}},
      {"the connection cap counts authenticated connections too",
       {2, 0, 0, 0, 0},
       {{S::kAdmit, "a"},
        {S::kAuthenticated, "a"},
        {S::kAdmit, "b"},
        {S::kAdmit, "c", true, 0.99, Refusal::kConnections},
        {S::kClosedAuth, "a"},
        {S::kAdmit, "c"}}},
      {"authenticating frees an unauthenticated slot, not a connection",
       {0, 2, 0, 0, 0},
       {{S::kAdmit, "a"},
        {S::kAdmit, "a"},
        {S::kAdmit, "b", true, 0.99, Refusal::kUnauthenticated},
        {S::kAuthenticated, "a"},
        {S::kAdmit, "b"}}},
      {"one source cannot take every slot; others still get in",
       {0, 0, 0, 2, 0},
       {{S::kAdmit, "attacker"},
        {S::kAdmit, "attacker"},
        {S::kAdmit, "attacker", true, 0.99, Refusal::kSource},
        {S::kAdmit, "agent"},
        {S::kClosedUnauth, "attacker"},
        {S::kAdmit, "attacker"}}},
      {"an authenticated connection no longer counts against its source",
       {0, 0, 0, 1, 0},
       {{S::kAdmit, "nat"},
        {S::kAdmit, "nat", true, 0.99, Refusal::kSource},
        {S::kAuthenticated, "nat"},
        {S::kAdmit, "nat"},
        {S::kClosedAuth, "nat"},  // the first one ends: the second still counts
        {S::kAdmit, "nat", true, 0.99, Refusal::kSource}}},
      {"no source: the per-source cap does not apply (mesh mode)",
       {0, 0, 0, 1, 0},
       {{S::kAdmit, ""}, {S::kAdmit, ""}, {S::kAdmit, ""}}},
      {"handshake slots: plaintext needs none; a finished handshake frees one",
       {0, 0, 0, 0, 1},
       {{S::kAdmit, "a"},
        {S::kAdmit, "b", true, 0.99, Refusal::kHandshakes},
        {S::kAdmit, "b", false},
        {S::kHandshakeEnded, ""},
        {S::kAdmit, "b"}}},
      {"early drop: none below the band, 30 % at its start, rising to 100 %",
       {0, 4, 2, 0, 0},
       {{S::kAdmit, "a", true, 0.0},  // below the band: even coin 0 is admitted
        {S::kAdmit, "a", true, 0.0},
        {S::kAdmit, "a", true, 0.29, Refusal::kEarlyDrop},  // 2 of 4: p = 0.30
        {S::kAdmit, "a", true, 0.31},                       // admitted: now 3
        {S::kAdmit, "a", true, 0.64, Refusal::kEarlyDrop},  // p = 0.65
        {S::kAdmit, "a", true, 0.66},                       // now 4: the cap
        {S::kAdmit, "a", true, 0.999, Refusal::kUnauthenticated}}},
  };
  for (const auto& c : cases) run(c);
}

TEST(Admission, CountsReturnToZero) {
  Admission a({10, 10, 0, 3, 10});
  ASSERT_EQ(a.admit("x", true, 0.5), Refusal::kNone);
  ASSERT_EQ(a.admit("y", false, 0.5), Refusal::kNone);
  a.handshakeEnded();
  a.authenticated("x");
  auto c = a.counts();
  EXPECT_EQ(c.connections, 2u);
  EXPECT_EQ(c.unauthenticated, 1u);
  EXPECT_EQ(c.handshakes, 0u);
  EXPECT_EQ(c.sources, 1u);
  a.closed("x", true);
  a.closed("y", false);
  c = a.counts();
  EXPECT_EQ(c.connections + c.unauthenticated + c.handshakes + c.sources, 0u);
}

}  // namespace
}  // namespace aa
