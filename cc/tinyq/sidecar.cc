// tinyq sidecar parser: nlohmann-json behind a C API. The rules mirror python/tinyq/registry/sidecar.py,
// and tests/vectors/sidecars/ holds the cases both must agree on.
#include "cc/tinyq/sidecar.h"

#include "cc/tinyq/files.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace {

using nlohmann::json;
using tinyq::internal::Fd;
using tinyq::internal::OpenRegular;
using tinyq::internal::ReadUpTo;
using tinyq::internal::SetStatus;

// A failure while filling the struct: carries the code and the message out of the helpers.
struct Failure {
  tinyq_code code;
  std::string message;
};

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

// An integer that fits in int64 (nlohmann keeps integers up to UINT64_MAX as unsigned; Python's
// reader would take any size).
bool IsInt64(const json& v) {
  if (!v.is_number_integer()) return false;
  return !v.is_number_unsigned() || v.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX);
}

std::string TooLarge(const std::string& size) {
  return "the sidecar is " + size + "larger than " + std::to_string(TINYQ_MAX_SIDECAR_BYTES) + " bytes (1 MiB cap)";
}

// A first, streaming pass over the bytes: syntax, nesting depth and duplicate keys. nlohmann's DOM
// parser keeps the last of two equal keys and its copy, dump and comparison recurse (a 1 MiB
// sidecar nests 500,000 deep), so both are refused here, before a DOM exists.
class Precheck : public nlohmann::json_sax<json> {
 public:
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return Open(); }
  bool start_array(std::size_t) override { return Open(); }
  bool end_object() override { return Close(); }
  bool end_array() override { return Close(); }
  bool key(string_t& k) override {
    // Only levels within the limit are tracked; deeper ones already fail the depth check.
    if (depth_ <= TINYQ_MAX_DEPTH && !keys_.empty() && duplicate_.empty() && !keys_.back().insert(k).second) duplicate_ = k;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }

  size_t max_depth() const { return max_depth_; }
  const std::string& duplicate() const { return duplicate_; }

 private:
  bool Open() {
    ++depth_;
    if (depth_ > max_depth_) max_depth_ = depth_;
    if (depth_ <= TINYQ_MAX_DEPTH) keys_.emplace_back();
    return true;
  }
  bool Close() {
    if (depth_ <= TINYQ_MAX_DEPTH && !keys_.empty()) keys_.pop_back();
    --depth_;
    return true;
  }

  size_t depth_ = 0, max_depth_ = 0;
  std::vector<std::set<std::string>> keys_;  // one per open container within the limit (empty for arrays)
  std::string duplicate_;
};

// True when a relative path stays where it starts: not absolute, no backslash (a separator on
// Windows), no ".." component and no NUL (which would cut the C string short). The rule of
// python/tinyq/registry/registry.py's path jail.
bool SafeRelativePath(const std::string& p) {
  if (p.empty()) return true;
  if (p[0] == '/' || p.find('\\') != std::string::npos || p.find('\0') != std::string::npos) return false;
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find('/', start);
    if (end == std::string::npos) end = p.size();
    if (p.compare(start, end - start, "..") == 0) return false;
    start = end + 1;
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
    if (IsInt64(d)) {
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
  if (!SafeRelativePath(onnx)) {
    throw Failure{TINYQ_E_ONNX_PATH_ESCAPE,
                  "field 'onnx' must be a path relative to the sidecar's directory that stays inside it "
                  "(not absolute, no '..', no backslash or NUL)"};
  }
  if (!onnx.empty()) sc->onnx = Dup(onnx);

  // "opset" is what tinyq writes; "onnx_opset" is accepted as an alias (the reference C parser
  // read only the alias, so its opset was always 0).
  const json* opset = Field(root, "opset");
  if (opset == nullptr) opset = Field(root, "onnx_opset");
  if (opset != nullptr) {
    if (!IsInt64(*opset)) throw Failure{TINYQ_E_SCHEMA, "field 'opset' must be an integer"};
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
    if (!IsInt64(*p)) throw Failure{TINYQ_E_SCHEMA, "field 'n_params' must be an integer"};
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
    SetStatus(status, TINYQ_E_TOO_LARGE, TooLarge(std::to_string(size) + " bytes, "));
    return TINYQ_E_TOO_LARGE;
  }
  // A syntax error, truncation, ill-formed UTF-8, a number that overflows a double or a lone
  // surrogate escape fails the streaming pass; nlohmann skips one leading UTF-8 BOM.
  Precheck pre;
  bool valid = false;
  try {
    valid = json::sax_parse(data, data + size, &pre, nlohmann::json::input_format_t::json, /*strict=*/true);
  } catch (const std::bad_alloc&) {
    SetStatus(status, TINYQ_E_NOMEM, "out of memory");
    return TINYQ_E_NOMEM;
  } catch (const std::exception&) {
    valid = false;
  }
  if (!valid) {
    SetStatus(status, TINYQ_E_PARSE, "the sidecar is not valid UTF-8 JSON (syntax error, truncation or ill-formed bytes)");
    return TINYQ_E_PARSE;
  }
  if (pre.max_depth() > TINYQ_MAX_DEPTH) {
    SetStatus(status, TINYQ_E_LIMIT, "the sidecar nests arrays and objects " + std::to_string(pre.max_depth()) +
                                         " deep, over the limit of " + std::to_string(TINYQ_MAX_DEPTH));
    return TINYQ_E_LIMIT;
  }
  if (!pre.duplicate().empty()) {
    SetStatus(status, TINYQ_E_DUPLICATE_KEY, "key '" + pre.duplicate().substr(0, 64) + "' appears twice in one object");
    return TINYQ_E_DUPLICATE_KEY;
  }
  json root;
  try {
    root = json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  } catch (const std::bad_alloc&) {
    SetStatus(status, TINYQ_E_NOMEM, "out of memory");
    return TINYQ_E_NOMEM;
  }
  if (root.is_discarded()) {  // not reached: the streaming pass accepted the same bytes
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
  Fd fd;
  struct stat st;
  if (const tinyq_code c = OpenRegular(path, "the sidecar", &fd, &st, status); c != TINYQ_OK) return c;
  if (st.st_size > static_cast<off_t>(TINYQ_MAX_SIDECAR_BYTES)) {  // refused unread, with its real size
    SetStatus(status, TINYQ_E_TOO_LARGE, std::string(path) + ": " + TooLarge(std::to_string(st.st_size) + " bytes, "));
    return TINYQ_E_TOO_LARGE;
  }
  // Read at most one byte past the cap: a file that grew since fstat is refused without reading it all.
  std::string data(TINYQ_MAX_SIDECAR_BYTES + 1, '\0');
  const ssize_t got = ReadUpTo(fd.fd, &data[0], data.size());
  if (got < 0) {
    SetStatus(status, TINYQ_E_IO, std::string(path) + ": cannot read the sidecar: " + std::strerror(errno));
    return TINYQ_E_IO;
  }
  if (static_cast<size_t>(got) > TINYQ_MAX_SIDECAR_BYTES) {
    SetStatus(status, TINYQ_E_TOO_LARGE, std::string(path) + ": " + TooLarge(""));
    return TINYQ_E_TOO_LARGE;
  }
  data.resize(static_cast<size_t>(got));
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

const char* tinyq_quant_mode_name(tinyq_quant_mode mode) {
  switch (mode) {
    case TINYQ_QUANT_FP32: return "fp32";
    case TINYQ_QUANT_DYNAMIC: return "dynamic";
    case TINYQ_QUANT_STATIC: return "static";
    case TINYQ_QUANT_QAT: return "qat";
  }
  return "fp32";
}

}  // extern "C"
