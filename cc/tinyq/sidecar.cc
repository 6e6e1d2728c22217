// tinyq sidecar parser: nlohmann-json behind a C API. The rules mirror python/tinyq/sidecar.py,
// and tests/vectors/sidecars/ holds the cases both must agree on.
#include "cc/tinyq/sidecar.h"

#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace {

using nlohmann::json;

// A failure while filling the struct: carries the code and the message out of the helpers.
struct Failure {
  tinyq_code code;
  std::string message;
};

void SetStatus(tinyq_status* status, tinyq_code code, const std::string& message) {
  if (status == nullptr) return;
  status->code = code;
  std::snprintf(status->message, sizeof(status->message), "%s", message.c_str());
}

char* Dup(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out == nullptr) throw std::bad_alloc();
  std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

bool IsHex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

const json* Field(const json& root, const char* name) {
  auto it = root.find(name);
  return it == root.end() ? nullptr : &*it;
}

std::string OptString(const json& root, const char* name, bool required = false) {
  const json* v = Field(root, name);
  if (v == nullptr) {
    if (required) throw Failure{TINYQ_E_SCHEMA, std::string("field '") + name + "' is required"};
    return std::string();
  }
  if (!v->is_string()) throw Failure{TINYQ_E_SCHEMA, std::string("field '") + name + "' must be a string"};
  return v->get<std::string>();
}

void CheckArraySize(const json& v, const char* name) {
  if (v.size() > TINYQ_MAX_ARRAY_ELEMENTS) {
    throw Failure{TINYQ_E_LIMIT, std::string("field '") + name + "' has " + std::to_string(v.size()) +
                                     " elements, over the limit of " + std::to_string(TINYQ_MAX_ARRAY_ELEMENTS)};
  }
}

std::vector<std::string> StringArray(const json& v, const char* name) {
  if (!v.is_array()) throw Failure{TINYQ_E_SCHEMA, std::string("field '") + name + "' must be an array of strings"};
  CheckArraySize(v, name);
  std::vector<std::string> out;
  for (const json& e : v) {
    if (!e.is_string()) throw Failure{TINYQ_E_SCHEMA, std::string("field '") + name + "' must be an array of strings"};
    out.push_back(e.get<std::string>());
  }
  return out;
}

std::vector<double> NumberArray(const json& v, const char* name) {
  if (!v.is_array()) throw Failure{TINYQ_E_SCHEMA, std::string("field '") + name + "' must be an array of numbers"};
  CheckArraySize(v, name);
  std::vector<double> out;
  for (const json& e : v) {
    if (!e.is_number()) throw Failure{TINYQ_E_SCHEMA, std::string("field '") + name + "' must be an array of numbers"};
    out.push_back(e.get<double>());
  }
  return out;
}

std::vector<int64_t> Shape(const json& v, const char* name) {
  if (!v.is_array()) throw Failure{TINYQ_E_SCHEMA, std::string("field '") + name + "' must hold arrays (shapes)"};
  if (v.size() > TINYQ_MAX_RANK) {
    throw Failure{TINYQ_E_LIMIT, std::string("a shape in '") + name + "' has rank " + std::to_string(v.size()) +
                                     ", over the limit of " + std::to_string(TINYQ_MAX_RANK)};
  }
  std::vector<int64_t> out;
  for (const json& d : v) {
    if (d.is_number_integer()) {
      out.push_back(d.get<int64_t>());
    } else if (d.is_string() || d.is_null()) {
      out.push_back(-1);  // a named or unknown dimension is dynamic
    } else {
      throw Failure{TINYQ_E_SCHEMA, std::string("a shape in '") + name + "' has a dimension that is not an integer"};
    }
  }
  return out;
}

// Inputs or outputs: the plural lists when present, else the reference toolkit's singular fields.
std::vector<std::pair<std::string, std::vector<int64_t>>> Specs(const json& root, const char* which) {
  const std::string names_key = std::string(which) + "_names";
  const std::string shapes_key = std::string(which) + "_shapes";
  const std::string name_key = std::string(which) + "_name";
  const std::string shape_key = std::string(which) + "_shape";
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  if (const json* n = Field(root, names_key.c_str())) {
    names = StringArray(*n, names_key.c_str());
    if (const json* s = Field(root, shapes_key.c_str())) {
      if (!s->is_array()) throw Failure{TINYQ_E_SCHEMA, "field '" + shapes_key + "' must be an array of shapes"};
      CheckArraySize(*s, shapes_key.c_str());
      for (const json& e : *s) shapes.push_back(Shape(e, shapes_key.c_str()));
      if (shapes.size() != names.size()) {
        throw Failure{TINYQ_E_INCONSISTENT, "'" + names_key + "' has " + std::to_string(names.size()) + " entries but '" +
                                                shapes_key + "' has " + std::to_string(shapes.size())};
      }
    }
  } else if (const json* n1 = Field(root, name_key.c_str())) {
    if (!n1->is_string()) throw Failure{TINYQ_E_SCHEMA, "field '" + name_key + "' must be a string"};
    names.push_back(n1->get<std::string>());
    if (const json* s1 = Field(root, shape_key.c_str())) shapes.push_back(Shape(*s1, shape_key.c_str()));
  }
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  for (size_t i = 0; i < names.size(); ++i) {
    out.emplace_back(names[i], i < shapes.size() ? shapes[i] : std::vector<int64_t>());
  }
  return out;
}

void FillSpecs(const std::vector<std::pair<std::string, std::vector<int64_t>>>& specs, size_t* n, tinyq_tensor_spec** out) {
  *n = 0;
  *out = nullptr;
  if (specs.empty()) return;
  *out = static_cast<tinyq_tensor_spec*>(std::calloc(specs.size(), sizeof(tinyq_tensor_spec)));
  if (*out == nullptr) throw std::bad_alloc();
  *n = specs.size();
  for (size_t i = 0; i < specs.size(); ++i) {
    (*out)[i].name = Dup(specs[i].first);
    (*out)[i].rank = specs[i].second.size();
    if (!specs[i].second.empty()) {
      (*out)[i].shape = static_cast<int64_t*>(std::malloc(specs[i].second.size() * sizeof(int64_t)));
      if ((*out)[i].shape == nullptr) throw std::bad_alloc();
      std::memcpy((*out)[i].shape, specs[i].second.data(), specs[i].second.size() * sizeof(int64_t));
    }
  }
}

void Fill(const json& root, tinyq_sidecar* sc, tinyq_status* status) {
  if (!root.is_object()) throw Failure{TINYQ_E_SCHEMA, "the sidecar must be a JSON object"};
  // "name" identifies a reference toolkit sidecar that has no "id".
  if (Field(root, "id") == nullptr && Field(root, "name") == nullptr) {
    throw Failure{TINYQ_E_SCHEMA, "field 'id' (or the reference toolkit's 'name') is required"};
  }
  sc->id = Dup(OptString(root, Field(root, "id") != nullptr ? "id" : "name", /*required=*/true));
  const std::string kind = OptString(root, "kind");
  if (!kind.empty()) sc->kind = Dup(kind);
  const std::string onnx = OptString(root, "onnx");
  if (onnx.size() > TINYQ_MAX_PATH_BYTES) {
    throw Failure{TINYQ_E_LIMIT, "field 'onnx' is " + std::to_string(onnx.size()) + " bytes, over the path limit of " +
                                     std::to_string(TINYQ_MAX_PATH_BYTES)};
  }
  if (!onnx.empty()) sc->onnx = Dup(onnx);

  // "opset" is what tinyq writes; "onnx_opset" is accepted as an alias (the reference C parser
  // read only the alias, so its opset was always 0).
  const json* opset = Field(root, "opset");
  if (opset == nullptr) opset = Field(root, "onnx_opset");
  if (opset != nullptr) {
    if (!opset->is_number_integer()) throw Failure{TINYQ_E_SCHEMA, "field 'opset' must be an integer"};
    const int64_t v = opset->get<int64_t>();
    if (v < 0 || v > 1000) throw Failure{TINYQ_E_SCHEMA, "field 'opset' is out of range"};
    sc->opset = static_cast<int>(v);
  }

  for (const char* name : {"sha256", "int8_sha256"}) {
    const json* v = Field(root, name);
    if (v == nullptr) continue;
    if (!v->is_string() || !IsHex64(v->get<std::string>())) {
      throw Failure{TINYQ_E_SCHEMA, std::string("field '") + name + "' must be 64 lowercase hex digits"};
    }
    if (std::strcmp(name, "sha256") == 0) {
      std::snprintf(sc->sha256, sizeof(sc->sha256), "%s", v->get<std::string>().c_str());
    } else {
      sc->has_int8_sha256 = 1;
      std::snprintf(sc->int8_sha256, sizeof(sc->int8_sha256), "%s", v->get<std::string>().c_str());
    }
  }

  sc->quant_mode = TINYQ_QUANT_FP32;
  if (const json* mode = Field(root, "quant_mode")) {
    if (!mode->is_string()) throw Failure{TINYQ_E_SCHEMA, "field 'quant_mode' must be a string"};
    const std::string m = mode->get<std::string>();
    if (m == "fp32") {
      sc->quant_mode = TINYQ_QUANT_FP32;
    } else if (m == "dynamic") {
      sc->quant_mode = TINYQ_QUANT_DYNAMIC;
    } else if (m == "static") {
      sc->quant_mode = TINYQ_QUANT_STATIC;
    } else if (m == "qat") {
      sc->quant_mode = TINYQ_QUANT_QAT;
    } else if (status != nullptr) {
      status->has_warning = 1;
      std::snprintf(status->warning, sizeof(status->warning), "unknown quant_mode '%.64s'; using fp32", m.c_str());
    }
  }

  sc->quant_accuracy_budget_plcc = 0.01;
  if (const json* b = Field(root, "quant_accuracy_budget_plcc")) {
    if (!b->is_number()) throw Failure{TINYQ_E_SCHEMA, "field 'quant_accuracy_budget_plcc' must be a number"};
    sc->quant_accuracy_budget_plcc = b->get<double>();
  }

  FillSpecs(Specs(root, "input"), &sc->n_inputs, &sc->inputs);
  FillSpecs(Specs(root, "output"), &sc->n_outputs, &sc->outputs);

  std::vector<std::string> features;
  std::vector<double> mean, std_dev;
  if (const json* f = Field(root, "features")) features = StringArray(*f, "features");
  if (const json* m = Field(root, "input_mean")) mean = NumberArray(*m, "input_mean");
  if (const json* s = Field(root, "input_std")) std_dev = NumberArray(*s, "input_std");
  const size_t n = features.size();
  if ((Field(root, "input_mean") && mean.size() != n) || (Field(root, "input_std") && std_dev.size() != n)) {
    throw Failure{TINYQ_E_INCONSISTENT, "features (" + std::to_string(n) + "), input_mean (" + std::to_string(mean.size()) +
                                            ") and input_std (" + std::to_string(std_dev.size()) + ") must have the same length"};
  }
  sc->n_features = n;
  if (n > 0) {
    sc->features = static_cast<char**>(std::calloc(n, sizeof(char*)));
    if (sc->features == nullptr) throw std::bad_alloc();
    for (size_t i = 0; i < n; ++i) sc->features[i] = Dup(features[i]);
  }
  // Either array may be present without the other (a fuzzer found the crash when only one was).
  for (const auto& [values, dst] : {std::pair<const std::vector<double>*, double**>{&mean, &sc->input_mean},
                                    std::pair<const std::vector<double>*, double**>{&std_dev, &sc->input_std}}) {
    if (values->empty()) continue;
    *dst = static_cast<double*>(std::malloc(values->size() * sizeof(double)));
    if (*dst == nullptr) throw std::bad_alloc();
    std::memcpy(*dst, values->data(), values->size() * sizeof(double));
  }

  if (const json* a = Field(root, "arch")) sc->arch = Dup(a->dump());
  sc->n_params = -1;
  if (const json* p = Field(root, "n_params")) {
    if (!p->is_number_integer()) throw Failure{TINYQ_E_SCHEMA, "field 'n_params' must be an integer"};
    sc->n_params = p->get<int64_t>();
  }
}

}  // namespace

extern "C" {

tinyq_code tinyq_sidecar_parse(const char* data, size_t size, tinyq_sidecar** out, tinyq_status* status) {
  if (status != nullptr) std::memset(status, 0, sizeof(*status));
  if (out == nullptr || (data == nullptr && size > 0)) {
    SetStatus(status, TINYQ_E_INVALID_ARGUMENT, "NULL argument");
    return TINYQ_E_INVALID_ARGUMENT;
  }
  *out = nullptr;
  if (size > TINYQ_MAX_SIDECAR_BYTES) {
    SetStatus(status, TINYQ_E_TOO_LARGE, "the sidecar is " + std::to_string(size) + " bytes, over the 1 MiB limit");
    return TINYQ_E_TOO_LARGE;
  }
  // allow_exceptions=false: a syntax error, truncation or ill-formed UTF-8 gives a discarded value.
  json root = json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    SetStatus(status, TINYQ_E_PARSE, "the sidecar is not valid UTF-8 JSON (syntax error, truncation or ill-formed bytes)");
    return TINYQ_E_PARSE;
  }
  tinyq_sidecar* sc = static_cast<tinyq_sidecar*>(std::calloc(1, sizeof(tinyq_sidecar)));
  if (sc == nullptr) {
    SetStatus(status, TINYQ_E_NOMEM, "out of memory");
    return TINYQ_E_NOMEM;
  }
  try {
    Fill(root, sc, status);
  } catch (const Failure& f) {
    tinyq_sidecar_free(sc);
    SetStatus(status, f.code, f.message);
    return f.code;
  } catch (const std::bad_alloc&) {
    tinyq_sidecar_free(sc);
    SetStatus(status, TINYQ_E_NOMEM, "out of memory");
    return TINYQ_E_NOMEM;
  } catch (const std::exception& e) {  // nlohmann type errors, should a check above miss one
    tinyq_sidecar_free(sc);
    SetStatus(status, TINYQ_E_SCHEMA, e.what());
    return TINYQ_E_SCHEMA;
  }
  *out = sc;
  SetStatus(status, TINYQ_OK, "ok");
  return TINYQ_OK;
}

tinyq_code tinyq_sidecar_load(const char* path, tinyq_sidecar** out, tinyq_status* status) {
  if (status != nullptr) std::memset(status, 0, sizeof(*status));
  if (path == nullptr || out == nullptr) {
    SetStatus(status, TINYQ_E_INVALID_ARGUMENT, "NULL argument");
    return TINYQ_E_INVALID_ARGUMENT;
  }
  *out = nullptr;
  if (std::strlen(path) > TINYQ_MAX_PATH_BYTES) {
    SetStatus(status, TINYQ_E_LIMIT, "the path is over 4096 bytes");
    return TINYQ_E_LIMIT;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    SetStatus(status, TINYQ_E_IO, std::string(path) + ": cannot open the sidecar");
    return TINYQ_E_IO;
  }
  // Read at most one byte past the cap, so an oversize file is refused without reading it all.
  std::string data(TINYQ_MAX_SIDECAR_BYTES + 1, '\0');
  in.read(&data[0], static_cast<std::streamsize>(data.size()));
  if (in.bad()) {
    SetStatus(status, TINYQ_E_IO, std::string(path) + ": cannot read the sidecar");
    return TINYQ_E_IO;
  }
  data.resize(static_cast<size_t>(in.gcount()));
  const tinyq_code code = tinyq_sidecar_parse(data.data(), data.size(), out, status);
  if (code != TINYQ_OK && status != nullptr) {
    std::string message = std::string(path) + ": " + status->message;
    SetStatus(status, code, message);
  }
  return code;
}

void tinyq_sidecar_free(tinyq_sidecar* sc) {
  if (sc == nullptr) return;
  std::free(sc->id);
  std::free(sc->kind);
  std::free(sc->onnx);
  for (size_t i = 0; i < sc->n_inputs; ++i) {
    std::free(sc->inputs[i].name);
    std::free(sc->inputs[i].shape);
  }
  std::free(sc->inputs);
  for (size_t i = 0; i < sc->n_outputs; ++i) {
    std::free(sc->outputs[i].name);
    std::free(sc->outputs[i].shape);
  }
  std::free(sc->outputs);
  if (sc->features != nullptr) {
    for (size_t i = 0; i < sc->n_features; ++i) std::free(sc->features[i]);
  }
  std::free(sc->features);
  std::free(sc->input_mean);
  std::free(sc->input_std);
  std::free(sc->arch);
  std::free(sc);
}

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
  }
  return "unknown";
}

const char* tinyq_quant_mode_name(tinyq_quant_mode mode) {
  switch (mode) {
    case TINYQ_QUANT_FP32: return "fp32";
    case TINYQ_QUANT_DYNAMIC: return "dynamic";
    case TINYQ_QUANT_STATIC: return "static";
    case TINYQ_QUANT_QAT: return "qat";
  }
  return "fp32";
}

tinyq_code tinyq_sha256_file(const char* path, char hex[65], tinyq_status* status) {
  if (path == nullptr || hex == nullptr) {
    SetStatus(status, TINYQ_E_INVALID_ARGUMENT, "NULL argument");
    return TINYQ_E_INVALID_ARGUMENT;
  }
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path, "rb"), &std::fclose);
  if (!f) {
    SetStatus(status, TINYQ_E_IO, std::string(path) + ": cannot open");
    return TINYQ_E_IO;
  }
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    SetStatus(status, TINYQ_E_NOMEM, "cannot start a SHA-256 digest");
    return TINYQ_E_NOMEM;
  }
  unsigned char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f.get())) > 0) {
    if (EVP_DigestUpdate(ctx.get(), buf, n) != 1) {
      SetStatus(status, TINYQ_E_NOMEM, "SHA-256 update failed");
      return TINYQ_E_NOMEM;
    }
  }
  if (std::ferror(f.get())) {
    SetStatus(status, TINYQ_E_IO, std::string(path) + ": read error");
    return TINYQ_E_IO;
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), digest, &len) != 1 || len != 32) {
    SetStatus(status, TINYQ_E_NOMEM, "SHA-256 final failed");
    return TINYQ_E_NOMEM;
  }
  for (unsigned int i = 0; i < len; ++i) std::snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  hex[64] = '\0';
  return TINYQ_OK;
}

}  // extern "C"
