// tinyq_resolve: prints which file to load for a model, its mode, the hash verdict and why.
//
// Usage: bazel run //cc:tinyq_resolve -- model/tiny/<id>.onnx [--policy=fail-closed|fallback-fp32] [--jail=DIR]
//                                       [--bytes-to=FILE|-]
// Exit codes: 0 a verified file to load (and --help), 1 refused (missing or mismatching file, path
// escape, bad sidecar, a file that is not a regular one), 2 usage error, 3 an update of the
// registry was interrupted: its directory (the model's, or one up to --jail) holds
// .tinyq-journal.json, so its files may be a mix of old and new; `bazel run
// //python:validate_registry` finishes the update, then retry.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "cc/tinyq/loader.h"

namespace {

constexpr int kExitUpdateInterrupted = 3;

constexpr char kUsage[] =
    "usage: tinyq_resolve MODEL.onnx [--policy=fail-closed|fallback-fp32] [--jail=DIR] [--bytes-to=FILE|-]\n";

constexpr char kHelp[] =
    "Prints which file to load for MODEL.onnx: its <basename>.int8.onnx when the sidecar <basename>.json\n"
    "asks for an int8 mode and the file matches the sidecar's int8_sha256, else (with --policy=fallback-fp32)\n"
    "the fp32 model verified against sha256. No path is printed unverified.\n\n"
    "  --policy=fail-closed    refuse when the int8 file is missing or does not match (the default)\n"
    "  --policy=fallback-fp32  fall back to the verified fp32 model instead\n"
    "  --jail=DIR              refuse any file that resolves outside DIR, symlinks included\n"
    "  --bytes-to=FILE         write the verified bytes themselves (read once, hashed in memory) to FILE,\n"
    "                          a new file (an existing one is never replaced), or to stdout with '-' (the\n"
    "                          report then goes to stderr): a path can be swapped after it was checked\n"
    "  --help, -h              this text\n\n"
    "Exit codes: 0 a verified file (printed as path, mode, sha256, verdict, reason), 1 refused, 2 usage error,\n"
    "3 an update of the registry was interrupted (its directory holds .tinyq-journal.json: the files may be a\n"
    "mix of old and new; run `bazel run //python:validate_registry` to finish it, then retry).\n";

int Usage(const char* message) {
  std::fprintf(stderr, "tinyq_resolve: %s\n%s", message, kUsage);
  return 2;
}

// Relative paths resolve against the directory `bazel run` was called from.
std::string FromCaller(const std::string& path) {
  const char* dir = std::getenv("BUILD_WORKING_DIRECTORY");
  if (path.empty() || path[0] == '/' || dir == nullptr || dir[0] == '\0') return path;
  return std::string(dir) + "/" + path;
}

// Writes bytes to a new file at path ("-": stdout); an existing file or a symlink there is refused.
bool WriteBytes(const std::string& path, const tinyq_verified_bytes& bytes) {
  const int fd = path == "-" ? STDOUT_FILENO : ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) {
    std::fprintf(stderr, "tinyq_resolve: --bytes-to=%s: %s; pass a path where no file is\n", path.c_str(), std::strerror(errno));
    return false;
  }
  size_t done = 0;
  while (done < bytes.size) {
    const ssize_t n = ::write(fd, bytes.data + done, bytes.size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    done += static_cast<size_t>(n);
  }
  const bool ok = done == bytes.size && (fd == STDOUT_FILENO || ::close(fd) == 0);
  if (!ok) std::fprintf(stderr, "tinyq_resolve: --bytes-to=%s: write failed: %s\n", path.c_str(), std::strerror(errno));
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, jail, bytes_to;
  tinyq_policy policy = TINYQ_FAIL_CLOSED;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::printf("%s\n%s", kUsage, kHelp);
      return 0;
    }
    if (arg == "--policy=fail-closed") {
      policy = TINYQ_FAIL_CLOSED;
    } else if (arg == "--policy=fallback-fp32") {
      policy = TINYQ_FALLBACK_FP32;
    } else if (arg.rfind("--jail=", 0) == 0) {
      jail = FromCaller(arg.substr(7));
    } else if (arg.rfind("--bytes-to=", 0) == 0 && arg.size() > 11) {
      bytes_to = arg == "--bytes-to=-" ? "-" : FromCaller(arg.substr(11));
    } else if (arg.rfind("--", 0) == 0) {
      return Usage(("unknown flag " + arg).c_str());
    } else if (model.empty()) {
      model = FromCaller(arg);
    } else {
      return Usage("expected one model path");
    }
  }
  if (model.empty()) return Usage("missing the model path");

  tinyq_resolution res;
  tinyq_status status;
  tinyq_verified_bytes bytes{nullptr, 0};
  const char* jail_dir = jail.empty() ? nullptr : jail.c_str();
  const tinyq_code code = bytes_to.empty() ? tinyq_resolve(model.c_str(), policy, jail_dir, &res, &status)
                                           : tinyq_resolve_bytes(model.c_str(), policy, jail_dir, &res, &bytes, &status);
  std::unique_ptr<tinyq_verified_bytes, void (*)(tinyq_verified_bytes*)> owned(&bytes, &tinyq_verified_bytes_free);
  FILE* report = bytes_to == "-" ? stderr : stdout;
  if (status.has_warning) std::fprintf(stderr, "tinyq_resolve: warning: %s\n", status.warning);
  std::fprintf(report, "policy: %s\n", policy == TINYQ_FAIL_CLOSED ? "fail-closed" : "fallback-fp32");
  if (code != TINYQ_OK) {
    std::fprintf(report, "verdict: refused (%s)\nreason: %s\n", tinyq_code_name(code), status.message);
    if (code == TINYQ_E_UPDATE_INTERRUPTED) {
      std::fprintf(stderr, "tinyq_resolve: %s\n", status.message);
      return kExitUpdateInterrupted;
    }
    return 1;
  }
  std::fprintf(report, "path: %s\nmode: %s\nrequested_mode: %s\nsha256: %s\nverdict: verified%s\nreason: %s\n", res.path,
               tinyq_quant_mode_name(res.mode), tinyq_quant_mode_name(res.requested_mode), res.sha256,
               res.fell_back ? " (fell back)" : "", res.reason);
  if (!bytes_to.empty()) {
    if (!WriteBytes(bytes_to, bytes)) return 1;
    std::fprintf(report, "bytes: %zu verified bytes written to %s\n", bytes.size, bytes_to == "-" ? "stdout" : bytes_to.c_str());
  }
  return 0;
}
