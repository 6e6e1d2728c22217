// Reading files without blocking, SHA-256 of a file, and the names of the C API's codes.
#include "cc/tinyq/files.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace tinyq::internal {

namespace {

// What a file that is not a regular one is, for the message.
const char* Kind(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a file";
}

}  // namespace

void SetStatus(tinyq_status* status, tinyq_code code, const std::string& message) {
  if (status == nullptr) return;
  status->code = code;
  std::snprintf(status->message, sizeof(status->message), "%s", message.c_str());
}

tinyq_code OpenRegular(const char* path, const char* what, Fd* fd, struct stat* st, tinyq_status* status) {
  do {
    fd->fd = ::open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  } while (fd->fd < 0 && errno == EINTR);
  if (fd->fd < 0) {
    SetStatus(status, TINYQ_E_IO, std::string(path) + ": cannot open " + what + ": " + std::strerror(errno));
    return TINYQ_E_IO;
  }
  if (::fstat(fd->fd, st) != 0) {
    SetStatus(status, TINYQ_E_IO, std::string(path) + ": cannot stat " + what + ": " + std::strerror(errno));
    return TINYQ_E_IO;
  }
  if (!S_ISREG(st->st_mode)) {
    SetStatus(status, TINYQ_E_IO, std::string(path) + ": not a regular file (" + Kind(st->st_mode) + "); refusing to read it as " + what);
    return TINYQ_E_IO;
  }
  const int flags = ::fcntl(fd->fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd->fd, F_SETFL, flags & ~O_NONBLOCK);
  return TINYQ_OK;
}

ssize_t ReadUpTo(int fd, char* buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::read(fd, buf + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(got);
}

namespace {

tinyq_code Finish(EVP_MD_CTX* ctx, char hex[65], tinyq_status* status) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx, digest, &len) != 1 || len != 32) {
    SetStatus(status, TINYQ_E_NOMEM, "SHA-256 final failed");
    return TINYQ_E_NOMEM;
  }
  for (unsigned int i = 0; i < len; ++i) std::snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  hex[64] = '\0';
  return TINYQ_OK;
}

using Digest = std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)>;

// A SHA-256 digest, started; null (with status set) when OpenSSL cannot start one.
Digest StartSha256(tinyq_status* status) {
  Digest ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    SetStatus(status, TINYQ_E_NOMEM, "cannot start a SHA-256 digest");
    return Digest(nullptr, &EVP_MD_CTX_free);
  }
  return ctx;
}

}  // namespace

tinyq_code Sha256Hex(const unsigned char* data, size_t size, char hex[65], tinyq_status* status) {
  Digest ctx = StartSha256(status);
  if (!ctx) return TINYQ_E_NOMEM;
  if (EVP_DigestUpdate(ctx.get(), data, size) != 1) {
    SetStatus(status, TINYQ_E_NOMEM, "SHA-256 update failed");
    return TINYQ_E_NOMEM;
  }
  return Finish(ctx.get(), hex, status);
}

tinyq_code ReadAll(const char* path, const char* what, size_t max_bytes, std::vector<unsigned char>* bytes,
                   tinyq_status* status) {
  Fd fd;
  struct stat st;
  if (const tinyq_code c = OpenRegular(path, what, &fd, &st, status); c != TINYQ_OK) return c;
  const auto too_large = [&](const std::string& size) {
    SetStatus(status, TINYQ_E_TOO_LARGE, std::string(path) + ": " + what + " is " + size + ", over the " +
                                             std::to_string(max_bytes) + " bytes tinyq loads");
    return TINYQ_E_TOO_LARGE;
  };
  if (static_cast<unsigned long long>(st.st_size) > max_bytes) return too_large(std::to_string(st.st_size) + " bytes");
  bytes->resize(static_cast<size_t>(st.st_size) + 1);  // one more: a file that grew is seen to have grown
  size_t got = 0;
  for (;;) {
    if (got == bytes->size()) {
      if (bytes->size() > max_bytes) return too_large("growing past the cap");
      bytes->resize(std::min(bytes->size() * 2, max_bytes + 1));
    }
    const ssize_t n = ReadUpTo(fd.fd, reinterpret_cast<char*>(bytes->data() + got), bytes->size() - got);
    if (n < 0) {
      SetStatus(status, TINYQ_E_IO, std::string(path) + ": read error: " + std::strerror(errno));
      return TINYQ_E_IO;
    }
    got += static_cast<size_t>(n);
    if (got < bytes->size()) break;  // end of file
  }
  if (got > max_bytes) return too_large("growing past the cap");
  bytes->resize(got);
  return TINYQ_OK;
}

}  // namespace tinyq::internal

using tinyq::internal::Fd;
using tinyq::internal::OpenRegular;
using tinyq::internal::SetStatus;

extern "C" {

const char* tinyq_code_name(tinyq_code code) {
  switch (code) {
    case TINYQ_OK: return "ok";
    case TINYQ_E_INVALID_ARGUMENT: return "invalid_argument";
    case TINYQ_E_IO: return "io_error";
    case TINYQ_E_TOO_LARGE: return "too_large";
    case TINYQ_E_PARSE: return "parse_error";
    case TINYQ_E_SCHEMA: return "schema_error";
    case TINYQ_E_LIMIT: return "limit_exceeded";
    case TINYQ_E_INCONSISTENT: return "inconsistent";
    case TINYQ_E_INT8_MISSING: return "int8_missing";
    case TINYQ_E_HASH_MISMATCH: return "hash_mismatch";
    case TINYQ_E_PATH_ESCAPE: return "path_escape";
    case TINYQ_E_NOMEM: return "out_of_memory";
    case TINYQ_E_DUPLICATE_KEY: return "duplicate_key";
    case TINYQ_E_ONNX_PATH_ESCAPE: return "onnx_path_escape";
    case TINYQ_E_UPDATE_INTERRUPTED: return "update_interrupted";
  }
  return "unknown";
}

tinyq_code tinyq_sha256_file(const char* path, char hex[65], tinyq_status* status) {
  if (path == nullptr || hex == nullptr) {
    SetStatus(status, TINYQ_E_INVALID_ARGUMENT, "NULL argument");
    return TINYQ_E_INVALID_ARGUMENT;
  }
  Fd fd;
  struct stat st;
  if (const tinyq_code c = OpenRegular(path, "a file to hash", &fd, &st, status); c != TINYQ_OK) return c;
  tinyq::internal::Digest ctx = tinyq::internal::StartSha256(status);
  if (!ctx) return TINYQ_E_NOMEM;
  std::vector<unsigned char> buf(1 << 16);
  for (;;) {
    const ssize_t n = ::read(fd.fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      SetStatus(status, TINYQ_E_IO, std::string(path) + ": read error: " + std::strerror(errno));
      return TINYQ_E_IO;
    }
    if (n == 0) break;
    if (EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n)) != 1) {
      SetStatus(status, TINYQ_E_NOMEM, "SHA-256 update failed");
      return TINYQ_E_NOMEM;
    }
  }
  return tinyq::internal::Finish(ctx.get(), hex, status);
}

}  // extern "C"
