// Is this text one JSON value (RFC 8259)? A syntax check only: nothing is built.
//
// Every received resource event's payload is checked before it is applied or ACKed
// (delivery::validateEvent), on the agent's transport and the principal's listener. With
// nlohmann::json::accept that check took ~82 µs for 16 KiB, over half of what the agent's
// transport then spent per 16 KiB event; this one runs a flat loop with a byte table over strings,
// where an Application's bytes are, at over 1 GB/s (14 µs; docs/benchmarks.md section 11).
//
// It accepts what nlohmann::json::accept (3.11) accepts, so the change of checker changes no
// verdict (tools/fuzz/json_fuzz.cc compares the two), with one difference on purpose: nlohmann
// takes a NUL byte between tokens for the end of the text and ignores what follows ("{}\0junk"
// passes there), while here a NUL anywhere refuses, as Go's encoding/json (upstream's) does.
// nlohmann's other details are kept: a UTF-8 byte-order mark before the value is skipped; strings
// must be valid UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF), DEL
// (0x7F) is allowed, a \u escape of a high surrogate must be followed by one of a low surrogate and
// a lone low surrogate is refused; a number that does not fit a finite double ("1e400") is refused.
// Nesting depth is bounded only by the input (an explicit stack, no recursion).
#pragma once

#include <string_view>

namespace aa::json {

bool isValid(std::string_view text);

}  // namespace aa::json
