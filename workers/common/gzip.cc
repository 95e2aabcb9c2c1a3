// gzip (gzip.h) on zlib.
#include "workers/common/gzip.h"

#include <stdexcept>

#include <zlib.h>

namespace aa::gzip {

namespace {

constexpr int kGzipWindow = 15 + 16;  // 32 KiB window, gzip wrapper

struct Deflater {
  z_stream z{};
  Deflater() {
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, kGzipWindow, 8, Z_DEFAULT_STRATEGY) !=
        Z_OK) {
      throw std::runtime_error("zlib: deflateInit2 failed");
    }
  }
  ~Deflater() { deflateEnd(&z); }
};

struct Inflater {
  z_stream z{};
  Inflater() {
    if (inflateInit2(&z, kGzipWindow) != Z_OK)
      throw std::runtime_error("zlib: inflateInit2 failed");
  }
  ~Inflater() { inflateEnd(&z); }
};

}  // namespace

std::string compress(std::string_view in) {
  thread_local Deflater d;
  deflateReset(&d.z);
  std::string out(deflateBound(&d.z, in.size()), '\0');
  d.z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  d.z.avail_in = static_cast<uInt>(in.size());
  d.z.next_out = reinterpret_cast<Bytef*>(out.data());
  d.z.avail_out = static_cast<uInt>(out.size());
  int rc = deflate(&d.z, Z_FINISH);
  if (rc != Z_STREAM_END) throw std::runtime_error("zlib: deflate did not finish");
  out.resize(d.z.total_out);
  return out;
}

std::optional<std::string> decompress(std::string_view in, size_t limit, std::string& error) {
  thread_local Inflater i;
  inflateReset(&i.z);
  i.z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  i.z.avail_in = static_cast<uInt>(in.size());
  std::string out;
  char chunk[16 * 1024];
  for (;;) {
    i.z.next_out = reinterpret_cast<Bytef*>(chunk);
    i.z.avail_out = sizeof chunk;
    int rc = inflate(&i.z, Z_NO_FLUSH);
    size_t got = sizeof chunk - i.z.avail_out;
    if (out.size() + got > limit) {
      error = "decompresses to more than " + std::to_string(limit) + " bytes";
      return std::nullopt;
    }
    out.append(chunk, got);
    if (rc == Z_STREAM_END) {
      if (i.z.avail_in != 0) {
        error = "data after the end of the gzip stream";
        return std::nullopt;
      }
      return out;
    }
    if (rc == Z_BUF_ERROR && i.z.avail_in == 0) {
      error = "truncated gzip stream";
      return std::nullopt;
    }
    if (rc != Z_OK && rc != Z_BUF_ERROR) {
      error = std::string("not gzip: ") + (i.z.msg ? i.z.msg : "zlib error");
      return std::nullopt;
    }
  }
}

}  // namespace aa::gzip
