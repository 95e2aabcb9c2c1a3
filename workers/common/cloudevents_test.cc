// Golden tests of the wire encoding (wire spec §1.4): the serialized bytes of every event type
// this project emits are decoded by a minimal protobuf wire reader written here (independent of
// the generated code) and checked field by field: field numbers, wire types, attribute kinds
// (dataschema ce_uri = 5, extensions and datacontenttype ce_string = 3), data in binary_data (6),
// spec_version "1.0", never text_data (7) or proto_data (8).
#include "workers/common/cloudevents.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <gtest/gtest.h>

#include <map>

#include "workers/common/stream_pump.h"

namespace aa::ce {
namespace {

struct Field {
  int number;
  int wireType;
  uint64_t varint = 0;
  std::string bytes;
};

std::vector<Field> decode(const std::string& buf) {
  std::vector<Field> out;
  size_t i = 0;
  auto varint = [&]() {
    uint64_t v = 0;
    for (int shift = 0; i < buf.size(); shift += 7) {
      uint8_t b = static_cast<uint8_t>(buf[i++]);
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    ADD_FAILURE() << "truncated varint";
    return v;
  };
  while (i < buf.size()) {
    uint64_t key = varint();
    Field f{static_cast<int>(key >> 3), static_cast<int>(key & 7), 0, {}};
    if (f.wireType == 0) {
      f.varint = varint();
    } else if (f.wireType == 2) {
      uint64_t len = varint();
      EXPECT_LE(i + len, buf.size());
      f.bytes = buf.substr(i, len);
      i += len;
    } else {
      ADD_FAILURE() << "unexpected wire type " << f.wireType;
      return out;
    }
    out.push_back(f);
  }
  return out;
}

struct Decoded {
  std::map<int, std::vector<Field>> top;
  std::map<std::string, std::pair<int, std::string>> attrs;  // name -> (kind field, value)
};

Decoded decodeEvent(const io::cloudevents::v1::CloudEvent& e) {
  std::string bytes;
  EXPECT_TRUE(e.SerializeToString(&bytes));
  Decoded d;
  for (auto& f : decode(bytes)) {
    EXPECT_EQ(f.wireType, 2) << "field " << f.number;
    if (f.number == 5) {
      std::string key, value;
      for (auto& kv : decode(f.bytes)) {
        if (kv.number == 1) key = kv.bytes;
        if (kv.number == 2) value = kv.bytes;
      }
      auto inner = decode(value);
      EXPECT_EQ(inner.size(), 1u) << key;
      if (!inner.empty()) d.attrs[key] = {inner[0].number, inner[0].bytes};
    } else {
      d.top[f.number].push_back(f);
    }
  }
  return d;
}

std::string str(const Decoded& d, int field) {
  auto it = d.top.find(field);
  return it == d.top.end() ? "<absent>" : it->second.at(0).bytes;
}

constexpr int kCeString = 3, kCeUri = 5;

void expectCommon(const Decoded& d, const std::string& type, const std::string& target) {
  EXPECT_EQ(d.top.count(1), 0u) << "id is empty upstream, so it is not on the wire";
  EXPECT_EQ(str(d, 3), "1.0");
  EXPECT_EQ(str(d, 4), type);
  EXPECT_EQ(d.top.count(7), 0u) << "never text_data";
  EXPECT_EQ(d.top.count(8), 0u) << "never proto_data";
  ASSERT_EQ(d.attrs.count("dataschema"), 1u);
  EXPECT_EQ(d.attrs.at("dataschema").first, kCeUri) << "dataschema must be ce_uri";
  EXPECT_EQ(d.attrs.at("dataschema").second, target);
}

TEST(CloudEventGolden, ResourceEventsOfEveryType) {
  for (std::string suffix : {"create", "spec-update", "status-update", "delete"}) {
    auto e = makeResourceEvent(suffix, "application", "argocd/guestbook", "guestbook_uid-1",
                               "guestbook_uid-1_42", R"({"kind":"Application"})", "");
    auto d = decodeEvent(e);
    expectCommon(d, "io.argoproj.argocd-agent.event." + suffix, "application");
    EXPECT_EQ(d.attrs.at("datacontenttype"),
              std::make_pair(kCeString, std::string("application/json")));
    EXPECT_EQ(d.attrs.at("subject"), std::make_pair(kCeString, std::string("argocd/guestbook")));
    EXPECT_EQ(d.attrs.at("resourceid"), std::make_pair(kCeString, std::string("guestbook_uid-1")));
    EXPECT_EQ(d.attrs.at("eventid"), std::make_pair(kCeString, std::string("guestbook_uid-1_42")));
    EXPECT_EQ(str(d, 6), R"({"kind":"Application"})") << "JSON payload in binary_data";
    EXPECT_EQ(d.attrs.size(), 5u);
    EXPECT_FALSE(delivery::validateEvent(e).has_value());
  }
}

TEST(CloudEventGolden, HeartbeatBytes) {
  auto e = makeHeartbeat("agent://agent-managed", "6f1c2a4e-0000-4000-8000-000000000001");
  auto d = decodeEvent(e);
  expectCommon(d, "io.argoproj.argocd-agent.event.ping", "heartbeat");
  EXPECT_EQ(str(d, 2), "agent://agent-managed");
  EXPECT_EQ(d.attrs.at("resourceid").first, kCeString);
  EXPECT_EQ(d.attrs.at("eventid").first, kCeString);
  EXPECT_EQ(d.attrs.count("datacontenttype"), 0u) << "no payload, so no content type";
  EXPECT_EQ(str(d, 6), "") << "empty binary_data is present (field 6, length 0)";
  EXPECT_EQ(d.top.count(6), 1u);
  // Exact bytes with deterministic (sorted) map order.
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream sos(&bytes);
    google::protobuf::io::CodedOutputStream cos(&sos);
    cos.SetSerializationDeterministic(true);
    e.SerializeToCodedStream(&cos);
  }
  // source (2) = "agent://agent-managed" comes first; map entries are key (1) + value (2).
  EXPECT_EQ(bytes.substr(0, 23), std::string("\x12\x15") + "agent://agent-managed");
  EXPECT_NE(bytes.find(std::string("\x0a\x0a") + "dataschema" + "\x12\x0b\x2a\x09" + "heartbeat"),
            std::string::npos);
  EXPECT_NE(bytes.find(std::string("\x0a\x07") + "eventid" + "\x12\x26\x1a\x24" +
                       "6f1c2a4e-0000-4000-8000-000000000001"),
            std::string::npos);
  EXPECT_EQ(bytes.substr(bytes.size() - 2), std::string("\x32\x00", 2))
      << "binary_data last, empty";
}

TEST(CloudEventGolden, AckCopiesExtensionsOnly) {
  auto e = makeResourceEvent("spec-update", "appproject", "argocd/default", "default_u",
                             "default_u_7", "{}", "");
  (*e.mutable_attributes())["sentat"].set_ce_string("2026-11-26T10:00:00.000000001Z");
  (*e.mutable_attributes())["traceparent"].set_ce_string("00-abc-def-01");
  auto ack = makeAck(e, "agent://agent-managed");
  auto d = decodeEvent(ack);
  expectCommon(d, "io.argoproj.argocd-agent.event.processed", "eventProcessed");
  EXPECT_EQ(d.attrs.at("resourceid"), std::make_pair(kCeString, std::string("default_u")));
  EXPECT_EQ(d.attrs.at("eventid"), std::make_pair(kCeString, std::string("default_u_7")));
  EXPECT_EQ(d.attrs.at("sentat").first, kCeString);
  EXPECT_EQ(d.attrs.at("traceparent").first, kCeString);
  EXPECT_EQ(d.attrs.count("subject"), 0u) << "context attributes are not copied";
  EXPECT_EQ(d.attrs.count("datacontenttype"), 0u);
  EXPECT_EQ(str(d, 6), "");
}

TEST(EventValidation, NamesTheProblem) {
  auto good = makeResourceEvent("create", "application", "a/b", "r", "e", "{}", "");
  struct Case {
    std::function<void(io::cloudevents::v1::CloudEvent&)> mutate;
    std::string want;
  };
  std::vector<Case> cases = {
      {[](auto& e) { e.mutable_attributes()->erase("dataschema"); },
       "dataschema attribute is missing"},
      {[](auto& e) { (*e.mutable_attributes())["dataschema"].set_ce_string("application"); },
       "dataschema must be a ce_uri"},
      {[](auto& e) { e.set_binary_data("{not json"); }, "payload is not valid JSON"},
      {[](auto& e) { e.set_type("io.argoproj.argocd-agent.event.frobnicate"); }, "unknown type"},
      {[](auto& e) { e.set_type("FROBNICATE"); }, "unknown type"},
      {[](auto& e) { e.set_type("get"); }, "unknown type"},
      {[](auto& e) { e.set_spec_version("0.3"); }, "spec_version"},
      {[](auto& e) { (*e.mutable_attributes())["eventid"].set_ce_uri("x"); },
       "eventid extension must be ce_string"},
      {[](auto& e) { e.set_text_data("{}"); }, "text_data"},
  };
  for (auto& c : cases) {
    auto e = good;
    c.mutate(e);
    auto problem = delivery::validateEvent(e);
    ASSERT_TRUE(problem.has_value()) << c.want;
    EXPECT_NE(problem->find(c.want), std::string::npos) << *problem;
  }
}

TEST(EventValidation, UpstreamCatalogueIsRecognised) {
  // Every type of upstream's catalogue is known; only the object events carry a payload we apply.
  const std::pair<std::string, Kind> cases[] = {
      {"io.argoproj.argocd-agent.event.processed", Kind::kAck},
      {"io.argoproj.argocd-agent.event.ping", Kind::kHeartbeat},
      {"io.argoproj.argocd-agent.event.create", Kind::kObject},
      {"io.argoproj.argocd-agent.event.spec-update", Kind::kObject},
      {"io.argoproj.argocd-agent.event.status-update", Kind::kObject},
      {"io.argoproj.argocd-agent.event.delete", Kind::kObject},
      {"io.argoproj.argocd-agent.event.request-synced-resource-list", Kind::kUnsupported},
      {"io.argoproj.argocd-agent.event.response-synced-resource", Kind::kUnsupported},
      {"io.argoproj.argocd-agent.event.request-update", Kind::kUnsupported},
      {"io.argoproj.argocd-agent.event.request-resource-resync", Kind::kUnsupported},
      {"io.argoproj.argocd-agent.event.cluster-cache-info-update", Kind::kUnsupported},
      {"io.argoproj.argocd-agent.event.set-operation", Kind::kUnsupported},
      {"io.argoproj.argocd-agent.event.terminate-operation", Kind::kUnsupported},
      {"io.argoproj.argocd-agent.event.response", Kind::kUnsupported},
      {"io.argoproj.argocd-agent.event.redis-request", Kind::kUnsupported},
      {"io.argoproj.argocd-agent.event.redis-response", Kind::kUnsupported},
      {"io.argoproj.argocd-agent.event.terminal-request", Kind::kUnsupported},
      {"io.argoproj.argocd-agent.event.error", Kind::kUnsupported},
      {"io.argoproj.argocd-agent.event.pong", Kind::kUnsupported},
      {"io.argoproj.argocd-agent.event.get", Kind::kUnsupported},
      {"GET", Kind::kUnsupported},
      {"POST", Kind::kUnsupported},
      {"io.argoproj.argocd-agent.event.frobnicate", Kind::kUnknown},
      {"io.argoproj.argocd-agent.event.", Kind::kUnknown},
      {"", Kind::kUnknown},
  };
  for (const auto& [type, want] : cases) EXPECT_EQ(classify(type), want) << type;
  // A resync request passes validation without a JSON check of its own (it is not applied).
  auto e = makeResourceEvent("request-synced-resource-list", "resourceResync", "", "u-1", "u-1",
                             R"({"checksum":"AAAA"})", "");
  EXPECT_FALSE(delivery::validateEvent(e).has_value());
}

}  // namespace
}  // namespace aa::ce

TEST(CloudEvents, ParsesSentatAsGoFormatsIt) {
  // time.RFC3339Nano drops trailing zeros of the fraction, and the fraction when it is zero.
  EXPECT_EQ(aa::ce::parseRfc3339Nanos("1970-01-01T00:00:00Z"), 0);
  EXPECT_EQ(aa::ce::parseRfc3339Nanos("2026-11-26T10:00:00.000000001Z"), 1795687200000000001);
  EXPECT_EQ(aa::ce::parseRfc3339Nanos("2026-11-26T10:00:00.5Z"), 1795687200500000000);
  EXPECT_EQ(aa::ce::parseRfc3339Nanos("2026-11-26T11:30:00+01:30"), 1795687200000000000);
  EXPECT_EQ(aa::ce::parseRfc3339Nanos("2024-02-29T23:59:59.999999999-00:00"), 1709251199999999999);
  // And back, as Go's time.Format(time.RFC3339Nano) writes them.
  EXPECT_EQ(aa::ce::formatRfc3339Nanos(1795687200000000001), "2026-11-26T10:00:00.000000001Z");
  EXPECT_EQ(aa::ce::formatRfc3339Nanos(1795687200500000000), "2026-11-26T10:00:00.5Z");
  EXPECT_EQ(aa::ce::formatRfc3339Nanos(1795687200000000000), "2026-11-26T10:00:00Z");
  EXPECT_EQ(aa::ce::formatRfc3339Nanos(0), "1970-01-01T00:00:00Z");
  for (int64_t t : {int64_t{1709251199999999999}, int64_t{1795687200123456000}}) {
    EXPECT_EQ(aa::ce::parseRfc3339Nanos(aa::ce::formatRfc3339Nanos(t)), t);
  }
  for (const char* bad :
       {"", "2026-11-26", "2026-11-26T10:00:00", "2026-13-26T10:00:00Z", "2026-11-26T10:00:00.Z",
        "2026-11-26T10:00:00.0000000001Z", "2026-11-26T10:00:00Zx", "2026-11-26 10:00:00Z",
        "2026-11-26T10:00:00+0100", "20x6-11-26T10:00:00Z"}) {
    EXPECT_EQ(aa::ce::parseRfc3339Nanos(bad), std::nullopt) << bad;
  }
}
