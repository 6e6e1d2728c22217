/* tinyq verified loader: which file to load for a model, never an unverified one. */
#ifndef TINYQ_LOADER_H_
#define TINYQ_LOADER_H_

#include <stddef.h>

#include "cc/tinyq/sidecar.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  TINYQ_FAIL_CLOSED = 0,   /* a missing or mismatching int8 file is an error */
  TINYQ_FALLBACK_FP32 = 1, /* ... or load the fp32 file, once its own hash is verified */
} tinyq_policy;

typedef struct {
  char path[TINYQ_MAX_PATH_BYTES + 1]; /* the verified file to load */
  tinyq_quant_mode mode;               /* the mode actually used: FP32 after a fallback */
  tinyq_quant_mode requested_mode;     /* the sidecar's quant_mode */
  int fell_back;
  char sha256[65]; /* the verified hash of path */
  char reason[512];
} tinyq_resolution;

/* Resolves the file to load for the fp32 model at fp32_path. The path it returns was verified, but
 * the file system may swap it before the caller opens it: load with tinyq_resolve_bytes instead.
 * Resolves the file to load for the fp32 model at fp32_path (its sidecar is <basename>.json).
 * When quant_mode is not FP32 the <basename>.int8.onnx beside it must match int8_sha256;
 * otherwise FAIL_CLOSED returns the error and FALLBACK_FP32 returns the fp32 file after
 * verifying it against sha256, with the reason. jail_dir (or NULL) is a directory that every
 * path, once symlinks are resolved, must stay inside; the sidecar's "onnx" too
 * (TINYQ_E_ONNX_PATH_ESCAPE, as the parser returns for one that is absolute or climbs with "..").
 * Files are read only when regular (a FIFO, device or directory is TINYQ_E_IO, without blocking).
 * While an update of the registry is under way or was interrupted, its directory holds
 * .tinyq-journal.json and its files may be a mix of old and new: TINYQ_E_UPDATE_INTERRUPTED, when
 * the model's directory (or, with a jail, any directory from the model's up to the jail) holds
 * one, checked before the files are read and again before a verified result is returned. */
tinyq_code tinyq_resolve(const char* fp32_path, tinyq_policy policy, const char* jail_dir, tinyq_resolution* out,
                         tinyq_status* status);

#define TINYQ_MAX_MODEL_BYTES ((size_t)2147483647) /* 2 GiB - 1: what one ONNX protobuf can hold */

/* The bytes of a verified model, in memory. */
typedef struct {
  unsigned char* data; /* malloc'd; release with tinyq_verified_bytes_free */
  size_t size;
} tinyq_verified_bytes;

/* tinyq_resolve, handing out what it verified: the file to load is read once, into bytes, and its
 * SHA-256 is computed over exactly those bytes. A path can be swapped between a check and the open
 * that follows it; these bytes cannot. Load them from memory (onnxruntime:
 * CreateSessionFromArray). A model over TINYQ_MAX_MODEL_BYTES is TINYQ_E_TOO_LARGE, unread. On any
 * code but TINYQ_OK, bytes is left empty (data NULL, size 0). */
tinyq_code tinyq_resolve_bytes(const char* fp32_path, tinyq_policy policy, const char* jail_dir, tinyq_resolution* out,
                               tinyq_verified_bytes* bytes, tinyq_status* status);

/* Frees what tinyq_resolve_bytes handed out and empties bytes; a NULL or empty one is a no-op. */
void tinyq_verified_bytes_free(tinyq_verified_bytes* bytes);

#ifdef __cplusplus
}
#endif

#endif /* TINYQ_LOADER_H_ */
