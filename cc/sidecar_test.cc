// The sidecar parser against the shared vectors in tests/vectors/sidecars/ (also read by
// python/tinyq/sidecar_test.py), plus the C API's own contracts.
#include "cc/tinyq/sidecar.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path kVectors = "tests/vectors/sidecars";

json ReadJson(const fs::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

std::vector<fs::path> Expectations() {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(kVectors)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 12 && name.compare(name.size() - 12, 12, ".expect.json") == 0) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<int64_t> Shape(const tinyq_tensor_spec& s) { return std::vector<int64_t>(s.shape, s.shape + s.rank); }

TEST(SidecarVectors, EveryVectorParsesAsExpected) {
  const auto expectations = Expectations();
  ASSERT_GE(expectations.size(), 20u);
  for (const fs::path& expect_path : expectations) {
    const std::string name = expect_path.filename().string().substr(0, expect_path.filename().string().size() - 12);
    SCOPED_TRACE(name);
    const json expect = ReadJson(expect_path);
    fs::path input = kVectors / (name + ".json");
    if (expect.contains("generate_bytes")) {
      input = fs::path(std::getenv("TEST_TMPDIR")) / (name + ".json");
      std::ofstream(input, std::ios::binary) << std::string(expect["generate_bytes"].get<size_t>(), ' ');
    }
    tinyq_sidecar* sc = nullptr;
    tinyq_status st;
    const tinyq_code code = tinyq_sidecar_load(input.c_str(), &sc, &st);
    EXPECT_STREQ(tinyq_code_name(code), expect["status"].get<std::string>().c_str()) << st.message;
    EXPECT_EQ(st.code, code);
    if (code != TINYQ_OK) {
      EXPECT_EQ(sc, nullptr);
      EXPECT_NE(std::string(st.message).find(input.string()), std::string::npos) << "the message names the file";
      continue;
    }
    ASSERT_NE(sc, nullptr);
    if (expect.contains("quant_mode")) {
      EXPECT_STREQ(tinyq_quant_mode_name(sc->quant_mode), expect["quant_mode"].get<std::string>().c_str());
    }
    if (expect.contains("warning")) {
      EXPECT_EQ(st.has_warning != 0, expect["warning"].get<bool>());
    }
    if (expect.contains("opset")) {
      EXPECT_EQ(sc->opset, expect["opset"].get<int>());
    }
    if (expect.contains("id")) {
      EXPECT_STREQ(sc->id, expect["id"].get<std::string>().c_str());
    }
    if (expect.contains("budget")) {
      EXPECT_DOUBLE_EQ(sc->quant_accuracy_budget_plcc, expect["budget"].get<double>());
    }
    if (expect.contains("n_features")) {
      EXPECT_EQ(sc->n_features, expect["n_features"].get<size_t>());
    }
    if (expect.contains("n_params")) {
      EXPECT_EQ(sc->n_params, expect["n_params"].get<int64_t>());
    }
    if (expect.contains("has_int8_sha256")) {
      EXPECT_EQ(sc->has_int8_sha256 != 0, expect["has_int8_sha256"].get<bool>());
    }
    for (const char* which : {"input", "output"}) {
      const std::string names_key = std::string(which) + "_names", shapes_key = std::string(which) + "_shapes";
      const size_t n = std::string(which) == "input" ? sc->n_inputs : sc->n_outputs;
      const tinyq_tensor_spec* specs = std::string(which) == "input" ? sc->inputs : sc->outputs;
      if (expect.contains(names_key)) {
        ASSERT_EQ(n, expect[names_key].size());
        for (size_t i = 0; i < n; ++i) {
          EXPECT_STREQ(specs[i].name, expect[names_key][i].get<std::string>().c_str());
        }
      }
      if (expect.contains(shapes_key)) {
        ASSERT_EQ(n, expect[shapes_key].size());
        for (size_t i = 0; i < n; ++i) {
          EXPECT_EQ(Shape(specs[i]), expect[shapes_key][i].get<std::vector<int64_t>>());
        }
      }
    }
    tinyq_sidecar_free(sc);
  }
}

TEST(Sidecar, FullMlpCarriesEveryField) {
  tinyq_sidecar* sc = nullptr;
  tinyq_status st;
  ASSERT_EQ(tinyq_sidecar_load((kVectors / "full_mlp.json").c_str(), &sc, &st), TINYQ_OK) << st.message;
  EXPECT_STREQ(sc->kind, "fr");
  EXPECT_STREQ(sc->onnx, "m.onnx");
  EXPECT_EQ(std::string(sc->sha256), std::string(64, 'a'));
  EXPECT_EQ(std::string(sc->int8_sha256), std::string(64, 'c'));
  ASSERT_EQ(sc->n_features, 6u);
  EXPECT_STREQ(sc->features[5], "motion2");
  EXPECT_DOUBLE_EQ(sc->input_mean[5], 3.2);
  EXPECT_DOUBLE_EQ(sc->input_std[0], 0.1);
  EXPECT_STREQ(sc->arch, R"({"layers":[6,16,8,1],"name":"mlp"})");
  tinyq_sidecar_free(sc);
}

TEST(Sidecar, ShippedZooSidecarsParse) {
  for (const auto& e : fs::directory_iterator("model/tiny")) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() != ".json" || name == "registry.json" || name.find("schema") != std::string::npos) continue;
    SCOPED_TRACE(name);
    tinyq_sidecar* sc = nullptr;
    tinyq_status st;
    ASSERT_EQ(tinyq_sidecar_load(e.path().c_str(), &sc, &st), TINYQ_OK) << st.message;
    EXPECT_EQ(sc->opset, 17);
    EXPECT_NE(sc->quant_mode, TINYQ_QUANT_FP32);
    EXPECT_TRUE(sc->has_int8_sha256);
    EXPECT_GE(sc->n_inputs, 1u);
    tinyq_sidecar_free(sc);
  }
}

TEST(Sidecar, NullArgumentsAndMissingFile) {
  tinyq_sidecar* sc = nullptr;
  tinyq_status st;
  EXPECT_EQ(tinyq_sidecar_load(nullptr, &sc, &st), TINYQ_E_INVALID_ARGUMENT);
  EXPECT_EQ(tinyq_sidecar_load("x.json", nullptr, &st), TINYQ_E_INVALID_ARGUMENT);
  EXPECT_EQ(tinyq_sidecar_load("no/such/file.json", &sc, &st), TINYQ_E_IO);
  EXPECT_EQ(tinyq_sidecar_parse(nullptr, 0, &sc, nullptr), TINYQ_E_PARSE);  // empty input, no status wanted
  EXPECT_EQ(tinyq_sidecar_load(std::string(5000, 'a').c_str(), &sc, &st), TINYQ_E_LIMIT);
  tinyq_sidecar_free(nullptr);
}

TEST(Sha256, KnownAnswer) {
  const fs::path p = fs::path(std::getenv("TEST_TMPDIR")) / "abc";
  std::ofstream(p, std::ios::binary) << "abc";
  char hex[65];
  tinyq_status st;
  ASSERT_EQ(tinyq_sha256_file(p.c_str(), hex, &st), TINYQ_OK);
  EXPECT_STREQ(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(tinyq_sha256_file("no/such/file", hex, &st), TINYQ_E_IO);
}

}  // namespace
