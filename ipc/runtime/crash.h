// Loud, classified crashes: on SEGV/ABRT/BUS/ILL/FPE print a backtrace to stderr, then re-raise
// with the default action so the parent (the supervisor) sees the real signal. Every process.
#pragma once

namespace aa::crash {
void installHandlers();
}
