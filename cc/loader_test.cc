// The verified loader against the cases in tests/vectors/loader/, under both policies.
#include "cc/tinyq/loader.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Copies a case into TEST_TMPDIR as real files (runfiles are symlinks, which the jail would
// rightly reject), and for escape cases moves the int8 file out and links it back in.
fs::path Materialise(const fs::path& src, const json& expect) {
  const fs::path root = fs::path(std::getenv("TEST_TMPDIR")) / "loader";
  const fs::path dst = root / src.filename();
  fs::remove_all(dst);
  fs::create_directories(dst);
  for (const auto& e : fs::directory_iterator(src)) {
    if (e.path().filename() != "expect.json") fs::copy_file(fs::canonical(e.path()), dst / e.path().filename());
  }
  if (expect.value("escape_int8", false)) {
    const fs::path outside = root / (src.filename().string() + "_outside");
    fs::create_directories(outside);
    fs::rename(dst / "model.int8.onnx", outside / "model.int8.onnx");
    fs::create_symlink(outside / "model.int8.onnx", dst / "model.int8.onnx");
  }
  return dst;
}

TEST(LoaderVectors, EveryCaseUnderBothPolicies) {
  int cases = 0;
  for (const auto& e : fs::directory_iterator("tests/vectors/loader")) {
    SCOPED_TRACE(e.path().filename().string());
    const json expect = json::parse(std::ifstream(e.path() / "expect.json"));
    const fs::path dir = Materialise(e.path(), expect);
    const std::string model = (dir / "model.onnx").string();
    for (const auto& [key, policy] : {std::pair<std::string, tinyq_policy>{"fail_closed", TINYQ_FAIL_CLOSED},
                                      std::pair<std::string, tinyq_policy>{"fallback_fp32", TINYQ_FALLBACK_FP32}}) {
      SCOPED_TRACE(key);
      const json& want = expect.at(key);
      tinyq_resolution res;
      tinyq_status st;
      const tinyq_code code = tinyq_resolve(model.c_str(), policy, dir.c_str(), &res, &st);
      EXPECT_STREQ(tinyq_code_name(code), want["code"].get<std::string>().c_str()) << st.message;
      EXPECT_NE(std::string(st.message), "");
      if (code != TINYQ_OK) continue;
      EXPECT_EQ(fs::path(res.path).filename(), want["file"].get<std::string>());
      EXPECT_STREQ(tinyq_quant_mode_name(res.mode), want["mode"].get<std::string>().c_str());
      EXPECT_EQ(res.fell_back != 0, want["fell_back"].get<bool>());
      EXPECT_EQ(std::string(res.sha256).size(), 64u);
      EXPECT_NE(std::string(res.reason), "");
      if (want.contains("warning")) {
        EXPECT_EQ(st.has_warning != 0, want["warning"].get<bool>());
      }
      if (res.fell_back) {
        EXPECT_NE(std::string(res.reason).find("fell back"), std::string::npos) << res.reason;
      }
    }
    ++cases;
  }
  EXPECT_GE(cases, 8);
}

TEST(Loader, FlippedByteIsRefusedOrFallsBack) {
  const fs::path src = "tests/vectors/loader/int8_verified";
  const fs::path dir = Materialise(src, json::object());
  {
    std::fstream f(dir / "model.int8.onnx", std::ios::in | std::ios::out | std::ios::binary);
    char c;
    f.seekg(3);
    f.get(c);
    f.seekp(3);
    f.put(static_cast<char>(c ^ 0x01));
  }
  tinyq_resolution res;
  tinyq_status st;
  EXPECT_EQ(tinyq_resolve((dir / "model.onnx").c_str(), TINYQ_FAIL_CLOSED, nullptr, &res, &st), TINYQ_E_HASH_MISMATCH);
  ASSERT_EQ(tinyq_resolve((dir / "model.onnx").c_str(), TINYQ_FALLBACK_FP32, nullptr, &res, &st), TINYQ_OK);
  EXPECT_EQ(res.mode, TINYQ_QUANT_FP32);
  EXPECT_EQ(res.requested_mode, TINYQ_QUANT_DYNAMIC);
  EXPECT_NE(std::string(res.reason).find("has sha256"), std::string::npos);
}

TEST(Loader, WithoutAJailALinkedInt8FileIsAllowed) {
  const fs::path src = "tests/vectors/loader/path_escape";
  const fs::path dir = Materialise(src, json::parse(std::ifstream(src / "expect.json")));
  tinyq_resolution res;
  tinyq_status st;
  ASSERT_EQ(tinyq_resolve((dir / "model.onnx").c_str(), TINYQ_FAIL_CLOSED, nullptr, &res, &st), TINYQ_OK) << st.message;
  EXPECT_EQ(res.mode, TINYQ_QUANT_DYNAMIC);
}

TEST(Loader, BadArguments) {
  tinyq_resolution res;
  tinyq_status st;
  EXPECT_EQ(tinyq_resolve(nullptr, TINYQ_FAIL_CLOSED, nullptr, &res, &st), TINYQ_E_INVALID_ARGUMENT);
  EXPECT_EQ(tinyq_resolve("model.bin", TINYQ_FAIL_CLOSED, nullptr, &res, &st), TINYQ_E_INVALID_ARGUMENT);
  EXPECT_EQ(tinyq_resolve("x.onnx", TINYQ_FAIL_CLOSED, "/no/such/dir", &res, &st), TINYQ_E_IO);
  EXPECT_EQ(tinyq_resolve("no/such/model.onnx", TINYQ_FAIL_CLOSED, nullptr, &res, &st), TINYQ_E_IO);
}

}  // namespace
