// tinyq verified loader: picks the file to load for a model and never returns it unverified.
#include "cc/tinyq/loader.h"

#include <sys/stat.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cc/tinyq/files.h"

namespace {

using Bytes = std::vector<unsigned char>;
using tinyq::internal::SetStatus;

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The canonical path with every symlink resolved, or "" when it does not exist.
std::string RealPath(const std::string& path) {
  std::unique_ptr<char, void (*)(void*)> real(realpath(path.c_str(), nullptr), &std::free);
  return real ? std::string(real.get()) : std::string();
}

// True when real (canonical) is jail (canonical) or lies under it.
bool Within(const std::string& real, const std::string& jail) {
  return real == jail || (real.size() > jail.size() && real.compare(0, jail.size(), jail) == 0 && real[jail.size()] == '/');
}

// True when path, symlinks resolved, lies inside jail (already canonical).
bool InsideJail(const std::string& path, const std::string& jail) {
  if (jail.empty()) return true;
  const std::string real = RealPath(path);
  return !real.empty() && Within(real, jail);
}

// Whether anything is at path, symlinks followed; nothing is opened (open(2) on a FIFO blocks).
bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string Dirname(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// The file a Python writer keeps in a registry's directory while a multi-file update is under way
// (and after one was interrupted, until the next tool run replays it).
constexpr char kJournal[] = ".tinyq-journal.json";

// TINYQ_E_UPDATE_INTERRUPTED when dir holds the journal: its files may be a mix of old and new.
tinyq_code CheckJournal(const std::string& dir, std::string* message) {
  const std::string journal = dir + "/" + kJournal;
  struct stat st;
  if (::lstat(journal.c_str(), &st) == 0) {
    *message = dir + ": an update of this registry was interrupted (" + kJournal +
               "); run `bazel run //python:validate_registry` to finish it, then retry";
    return TINYQ_E_UPDATE_INTERRUPTED;
  }
  if (errno != ENOENT && errno != ENOTDIR) {
    *message = journal + ": cannot check for an interrupted registry update: " + std::strerror(errno);
    return TINYQ_E_IO;
  }
  return TINYQ_OK;
}

// Checks the model's directory and every directory above it up to the jail (the registry's
// directory is one of them), or the model's directory alone without a jail.
tinyq_code CheckJournals(const std::string& model_dir, const std::string& jail, std::string* message) {
  if (const tinyq_code c = CheckJournal(model_dir, message); c != TINYQ_OK) return c;
  if (jail.empty()) return TINYQ_OK;
  std::string dir = RealPath(model_dir);
  if (dir.empty() || !Within(dir, jail)) {
    return CheckJournal(jail, message);  // the model lies outside the jail: that is refused later
  }
  for (;;) {
    if (const tinyq_code c = CheckJournal(dir, message); c != TINYQ_OK) return c;
    if (dir == jail || dir == "/") return TINYQ_OK;
    dir = Dirname(dir);
  }
}

// The SHA-256 of the file at path; with bytes, of exactly the bytes read into it.
tinyq_code Hash(const std::string& path, const char* what, Bytes* bytes, char actual[65], tinyq_status* st) {
  if (bytes == nullptr) return tinyq_sha256_file(path.c_str(), actual, st);
  if (const tinyq_code c = tinyq::internal::ReadAll(path.c_str(), what, TINYQ_MAX_MODEL_BYTES, bytes, st); c != TINYQ_OK) {
    return c;
  }
  return tinyq::internal::Sha256Hex(bytes->data(), bytes->size(), actual, st);
}

// Verifies path against the expected hash (reading it into bytes, when given); fills reason on failure.
tinyq_code Verify(const std::string& path, const char* expected, const std::string& jail, const char* what,
                  tinyq_code missing_code, Bytes* bytes, char actual[65], std::string* reason) {
  if (!Exists(path)) {
    *reason = std::string(what) + " " + path + " is missing";
    return missing_code;
  }
  if (!InsideJail(path, jail)) {
    *reason = std::string(what) + " " + path + " resolves outside the model directory " + jail;
    return TINYQ_E_PATH_ESCAPE;
  }
  tinyq_status st{};
  if (Hash(path, what, bytes, actual, &st) != TINYQ_OK) {
    *reason = st.message;
    return st.code;
  }
  if (expected == nullptr || expected[0] == '\0') {
    *reason = std::string(what) + " " + path + " has no pinned sha256 in the sidecar";
    return TINYQ_E_HASH_MISMATCH;
  }
  if (std::strcmp(actual, expected) != 0) {
    *reason = std::string(what) + " " + path + " has sha256 " + actual + ", the sidecar pins " + expected;
    return TINYQ_E_HASH_MISMATCH;
  }
  return TINYQ_OK;
}

void Fill(tinyq_resolution* out, const std::string& path, tinyq_quant_mode mode, const char sha[65], const std::string& reason) {
  std::snprintf(out->path, sizeof(out->path), "%s", path.c_str());
  out->mode = mode;
  std::snprintf(out->sha256, sizeof(out->sha256), "%s", sha);
  std::snprintf(out->reason, sizeof(out->reason), "%s", reason.c_str());
}

// A verified result, unless an update of the registry began while the files were read: then the
// files checked may be a mix of old and new, and the result is withdrawn.
tinyq_code Done(const std::string& model_dir, const std::string& jail, tinyq_resolution* out, tinyq_status* status) {
  std::string message;
  if (const tinyq_code c = CheckJournals(model_dir, jail, &message); c != TINYQ_OK) {
    const tinyq_quant_mode requested = out->requested_mode;
    std::memset(out, 0, sizeof(*out));
    out->requested_mode = requested;
    SetStatus(status, c, message);
    std::snprintf(out->reason, sizeof(out->reason), "%s", message.c_str());
    return c;
  }
  SetStatus(status, TINYQ_OK, out->reason);
  return TINYQ_OK;
}

// tinyq_resolve; with bytes, the file to load is read into it and verified there.
tinyq_code Resolve(const char* fp32_path, tinyq_policy policy, const char* jail_dir, tinyq_resolution* out, Bytes* bytes,
                   tinyq_status* status) {
  if (status != nullptr) std::memset(status, 0, sizeof(*status));
  if (fp32_path == nullptr || out == nullptr) {
    SetStatus(status, TINYQ_E_INVALID_ARGUMENT, "NULL argument");
    return TINYQ_E_INVALID_ARGUMENT;
  }
  std::memset(out, 0, sizeof(*out));
  const std::string fp32(fp32_path);
  if (fp32.size() > TINYQ_MAX_PATH_BYTES || (jail_dir != nullptr && std::strlen(jail_dir) > TINYQ_MAX_PATH_BYTES)) {
    SetStatus(status, TINYQ_E_LIMIT, "a path is over 4096 bytes");
    return TINYQ_E_LIMIT;
  }
  if (!EndsWith(fp32, ".onnx")) {
    SetStatus(status, TINYQ_E_INVALID_ARGUMENT, fp32 + ": expected the fp32 model's .onnx path");
    return TINYQ_E_INVALID_ARGUMENT;
  }
  std::string jail;
  if (jail_dir != nullptr) {
    jail = RealPath(jail_dir);
    if (jail.empty()) {
      SetStatus(status, TINYQ_E_IO, std::string(jail_dir) + ": the model directory does not exist");
      return TINYQ_E_IO;
    }
  }
  std::string journal_message;
  if (const tinyq_code c = CheckJournals(Dirname(fp32), jail, &journal_message); c != TINYQ_OK) {
    SetStatus(status, c, journal_message);
    return c;
  }
  const std::string base = fp32.substr(0, fp32.size() - 5);
  const std::string sidecar_path = base + ".json";
  const std::string int8 = base + ".int8.onnx";
  if (!InsideJail(sidecar_path, jail) && Exists(sidecar_path)) {
    SetStatus(status, TINYQ_E_PATH_ESCAPE, sidecar_path + " resolves outside the model directory " + jail);
    return TINYQ_E_PATH_ESCAPE;
  }

  tinyq_sidecar* raw = nullptr;
  tinyq_status parse{};
  const tinyq_code parsed = tinyq_sidecar_load(sidecar_path.c_str(), &raw, &parse);
  if (parsed != TINYQ_OK) {
    SetStatus(status, parsed, parse.message);
    return parsed;
  }
  std::unique_ptr<tinyq_sidecar, void (*)(tinyq_sidecar*)> sc(raw, &tinyq_sidecar_free);
  if (status != nullptr && parse.has_warning) {
    status->has_warning = 1;
    std::snprintf(status->warning, sizeof(status->warning), "%s", parse.warning);
  }
  out->requested_mode = sc->quant_mode;
  // The parser refused an absolute "onnx" or one with ".."; a jail also catches a symlink out.
  if (sc->onnx != nullptr && !jail.empty()) {
    const std::string named = Dirname(fp32) + "/" + sc->onnx;
    const std::string real = RealPath(named);
    if (!real.empty() && !InsideJail(named, jail)) {
      SetStatus(status, TINYQ_E_ONNX_PATH_ESCAPE,
                sidecar_path + ": its 'onnx' " + sc->onnx + " resolves to " + real + ", outside the model directory " + jail);
      return TINYQ_E_ONNX_PATH_ESCAPE;
    }
  }

  char actual[65] = {0};
  std::string why;
  if (sc->quant_mode != TINYQ_QUANT_FP32) {
    const tinyq_code c = Verify(int8, sc->has_int8_sha256 ? sc->int8_sha256 : nullptr, jail, "int8 model", TINYQ_E_INT8_MISSING, bytes,
                                  actual, &why);
    if (c == TINYQ_OK) {
      Fill(out, int8, sc->quant_mode, actual, std::string("int8 model verified (") + tinyq_quant_mode_name(sc->quant_mode) + ")");
      return Done(Dirname(fp32), jail, out, status);
    }
    if (policy == TINYQ_FAIL_CLOSED) {
      SetStatus(status, c, why + "; refusing it (FAIL_CLOSED)");
      std::snprintf(out->reason, sizeof(out->reason), "%s", status->message);
      return c;
    }
    out->fell_back = 1;
  }
  std::string why_fp32;
  const tinyq_code c = Verify(fp32, sc->sha256, jail, "fp32 model", TINYQ_E_IO, bytes, actual, &why_fp32);
  if (c != TINYQ_OK) {
    SetStatus(status, c, (why.empty() ? "" : why + "; ") + why_fp32);
    std::snprintf(out->reason, sizeof(out->reason), "%s", status->message);
    return c;
  }
  Fill(out, fp32, TINYQ_QUANT_FP32, actual,
       out->fell_back ? why + "; fell back to the verified fp32 model (FALLBACK_FP32)" : std::string("fp32 model verified"));
  return Done(Dirname(fp32), jail, out, status);
}

}  // namespace

extern "C" tinyq_code tinyq_resolve(const char* fp32_path, tinyq_policy policy, const char* jail_dir, tinyq_resolution* out,
                                    tinyq_status* status) {
  return Resolve(fp32_path, policy, jail_dir, out, nullptr, status);
}

extern "C" tinyq_code tinyq_resolve_bytes(const char* fp32_path, tinyq_policy policy, const char* jail_dir,
                                          tinyq_resolution* out, tinyq_verified_bytes* bytes, tinyq_status* status) {
  if (bytes == nullptr) {
    if (status != nullptr) std::memset(status, 0, sizeof(*status));
    SetStatus(status, TINYQ_E_INVALID_ARGUMENT, "NULL argument");
    return TINYQ_E_INVALID_ARGUMENT;
  }
  *bytes = tinyq_verified_bytes{nullptr, 0};
  Bytes read;
  const tinyq_code c = Resolve(fp32_path, policy, jail_dir, out, &read, status);
  if (c != TINYQ_OK) return c;
  bytes->data = static_cast<unsigned char*>(std::malloc(read.empty() ? 1 : read.size()));
  if (bytes->data == nullptr) {
    SetStatus(status, TINYQ_E_NOMEM, "cannot allocate the verified model's bytes");
    return TINYQ_E_NOMEM;
  }
  std::memcpy(bytes->data, read.data(), read.size());
  bytes->size = read.size();
  return TINYQ_OK;
}

extern "C" void tinyq_verified_bytes_free(tinyq_verified_bytes* bytes) {
  if (bytes == nullptr) return;
  std::free(bytes->data);
  *bytes = tinyq_verified_bytes{nullptr, 0};
}
