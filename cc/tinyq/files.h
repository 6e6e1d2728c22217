// Internal to //cc:sidecar: reading files without blocking and reporting errors through
// tinyq_status. Not installed; the C API is cc/tinyq/sidecar.h.
#ifndef TINYQ_CC_TINYQ_FILES_H_
#define TINYQ_CC_TINYQ_FILES_H_

#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstddef>
#include <string>
#include <vector>

#include "cc/tinyq/sidecar.h"

namespace tinyq::internal {

// Sets status (when not NULL) to code and message, truncated to the message buffer.
void SetStatus(tinyq_status* status, tinyq_code code, const std::string& message);

// An open file descriptor, closed on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Opens path for reading without blocking (open(2) on a FIFO with no writer would wait forever)
// and refuses anything but a regular file. On success fd->fd is open (blocking again) and *st
// holds its fstat; otherwise status says why, naming the path.
tinyq_code OpenRegular(const char* path, const char* what, Fd* fd, struct stat* st, tinyq_status* status);

// Reads up to n bytes (fewer at end of file); -1 on a read error.
ssize_t ReadUpTo(int fd, char* buf, size_t n);

// The SHA-256 of data as 64 lowercase hex digits (OpenSSL's EVP API).
tinyq_code Sha256Hex(const unsigned char* data, size_t size, char hex[65], tinyq_status* status);

// Reads the whole regular file at path into *bytes, refusing (TINYQ_E_TOO_LARGE) one over max_bytes
// before it is read, or one that grows past it while it is.
tinyq_code ReadAll(const char* path, const char* what, size_t max_bytes, std::vector<unsigned char>* bytes,
                   tinyq_status* status);

}  // namespace tinyq::internal

#endif  // TINYQ_CC_TINYQ_FILES_H_
