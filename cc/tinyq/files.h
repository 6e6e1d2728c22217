// Internal to //cc:sidecar: reading files without blocking and reporting errors through
// tinyq_status. Not installed; the C API is cc/tinyq/sidecar.h.
#ifndef TINYQ_CC_TINYQ_FILES_H_
#define TINYQ_CC_TINYQ_FILES_H_

#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstddef>
#include <string>

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

}  // namespace tinyq::internal

#endif  // TINYQ_CC_TINYQ_FILES_H_
