/* tinyq sidecar parser and verified int8 loader: a C API over a C++17 implementation.
 *
 * A sidecar (<basename>.json beside <basename>.onnx) says how a model is fed and which file to
 * load. tinyq_sidecar_load() parses one (nlohmann-json; no hand-written parser); tinyq_resolve()
 * decides which model file to load and never returns a path whose SHA-256 it has not checked.
 * No C++ exception crosses this boundary: every function returns a tinyq_code, and fills a
 * tinyq_status with the message.
 */
#ifndef TINYQ_SIDECAR_H_
#define TINYQ_SIDECAR_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TINYQ_MAX_SIDECAR_BYTES (1024 * 1024) /* 1 MiB */
#define TINYQ_MAX_PATH_BYTES 4096
#define TINYQ_MAX_ARRAY_ELEMENTS 4096 /* features, mean, std, inputs, outputs */
#define TINYQ_MAX_RANK 8
#define TINYQ_MAX_DEPTH 64 /* nested arrays and objects, the top-level object counting as 1 */

typedef enum {
  TINYQ_QUANT_FP32 = 0,
  TINYQ_QUANT_DYNAMIC = 1,
  TINYQ_QUANT_STATIC = 2,
  TINYQ_QUANT_QAT = 3,
} tinyq_quant_mode;

typedef enum {
  TINYQ_OK = 0,
  TINYQ_E_INVALID_ARGUMENT = -1, /* a NULL or over-long argument */
  TINYQ_E_IO = -2,               /* a file that cannot be opened or read */
  TINYQ_E_TOO_LARGE = -3,        /* the sidecar is over TINYQ_MAX_SIDECAR_BYTES */
  TINYQ_E_PARSE = -4,            /* not JSON, truncated, or not UTF-8 */
  TINYQ_E_SCHEMA = -5,           /* a field of the wrong type, or a required one missing */
  TINYQ_E_LIMIT = -6,            /* an array, rank or path over its limit */
  TINYQ_E_INCONSISTENT = -7,     /* features, input_mean and input_std of different lengths */
  TINYQ_E_INT8_MISSING = -8,     /* quant_mode asks for an int8 file that is not there */
  TINYQ_E_HASH_MISMATCH = -9,    /* a file's SHA-256 differs from the sidecar's pin */
  TINYQ_E_PATH_ESCAPE = -10,     /* a path resolves outside the model-directory jail */
  TINYQ_E_NOMEM = -11,
  TINYQ_E_DUPLICATE_KEY = -12,     /* a key given twice in one JSON object (readers disagree on which wins) */
  TINYQ_E_ONNX_PATH_ESCAPE = -13,  /* the sidecar's "onnx" is absolute, climbs with "..", has a backslash or
                                      NUL, or (with a jail) resolves outside the model directory */
  TINYQ_E_UPDATE_INTERRUPTED = -14 /* the registry's directory holds .tinyq-journal.json: an update of it
                                      was interrupted and its files may be a mix of old and new */
} tinyq_code;

typedef struct {
  tinyq_code code;
  char message[512];
  int has_warning; /* e.g. an unknown quant_mode, read as FP32 */
  char warning[256];
} tinyq_status;

typedef struct {
  char* name;
  size_t rank;
  int64_t* shape; /* -1 for a dynamic dimension */
} tinyq_tensor_spec;

typedef struct {
  char* id;
  char* kind;
  char* onnx;
  int opset; /* "opset", or its alias "onnx_opset"; 0 when absent */
  char sha256[65];
  int has_int8_sha256;
  char int8_sha256[65];
  tinyq_quant_mode quant_mode;
  double quant_accuracy_budget_plcc; /* 0.01 when absent */
  size_t n_inputs;
  tinyq_tensor_spec* inputs;
  size_t n_outputs;
  tinyq_tensor_spec* outputs;
  size_t n_features; /* also the length of input_mean and input_std when present */
  char** features;
  double* input_mean;
  double* input_std;
  char* arch; /* the "arch" value as compact JSON text; NULL when absent */
  int64_t n_params; /* -1 when absent */
} tinyq_sidecar;

/* Parses the sidecar at path. On TINYQ_OK, *out is owned by the caller: tinyq_sidecar_free().
 * Only a regular file is read: a FIFO, device or directory is refused (TINYQ_E_IO, "not a regular
 * file") without blocking, and at most TINYQ_MAX_SIDECAR_BYTES + 1 bytes are read.
 *
 * The parse rules, shared with python/tinyq/registry/sidecar.py: strict UTF-8 JSON (RFC 8259), one leading
 * UTF-8 byte order mark ignored; numbers that overflow a double and lone UTF-16 surrogate escapes
 * are parse errors; nesting over TINYQ_MAX_DEPTH is TINYQ_E_LIMIT; a key given twice in one object
 * is TINYQ_E_DUPLICATE_KEY; integer fields (opset, n_params, shape dimensions) must fit in int64;
 * "onnx" must be a relative path that stays in the sidecar's directory (TINYQ_E_ONNX_PATH_ESCAPE).
 * A syntax error wins over a depth error, which wins over a duplicate key. */
tinyq_code tinyq_sidecar_load(const char* path, tinyq_sidecar** out, tinyq_status* status);
/* Parses a sidecar from memory (the fuzz entry point). */
tinyq_code tinyq_sidecar_parse(const char* data, size_t size, tinyq_sidecar** out, tinyq_status* status);
void tinyq_sidecar_free(tinyq_sidecar* sidecar);

/* The stable name of a code, e.g. "parse_error"; shared with tinyq's Python reader. */
const char* tinyq_code_name(tinyq_code code);
const char* tinyq_quant_mode_name(tinyq_quant_mode mode);

/* Lowercase hex SHA-256 of a file, streamed through OpenSSL's EVP interface. Only a regular file
 * is hashed: anything else is refused with TINYQ_E_IO without blocking (a FIFO would wait for a
 * writer forever). */
tinyq_code tinyq_sha256_file(const char* path, char hex[65], tinyq_status* status);

#ifdef __cplusplus
}
#endif

#endif /* TINYQ_SIDECAR_H_ */
