// The sidecar parser against the shared vectors in tests/vectors/sidecars/ (also read by
// python/tinyq/registry/sidecar_test.py), plus the C API's own contracts.
#include "cc/tinyq/sidecar.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
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

fs::path TmpDir() { return fs::path(std::getenv("TEST_TMPDIR")); }

// Runs call, which must return within 5 s. A reader blocked on a FIFO (the bug) is released by
// opening and closing the FIFO for writing, so a regression fails the test instead of hanging it.
template <typename T>
T Promptly(const std::function<T()>& call, const fs::path& fifo) {
  auto result = std::async(std::launch::async, call);
  if (result.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
    ADD_FAILURE() << "blocked on " << fifo << " (opened without O_NONBLOCK?)";
    while (result.wait_for(std::chrono::milliseconds(100)) != std::future_status::ready) {
      const int w = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
      if (w >= 0) ::close(w);
    }
  }
  return result.get();
}

fs::path MakeFifo(const std::string& name) {
  const fs::path p = TmpDir() / name;
  fs::remove(p);
  EXPECT_EQ(::mkfifo(p.c_str(), 0600), 0) << std::strerror(errno);
  return p;
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
      const size_t n = expect["generate_bytes"].get<size_t>();
      if (expect.value("generate_sparse", false)) {  // a sparse file of n bytes: a size to report, not to read
        std::ofstream(input, std::ios::binary).close();
        fs::resize_file(input, n);
      } else {
        std::ofstream(input, std::ios::binary) << std::string(n, ' ');
      }
    }
    tinyq_sidecar* sc = nullptr;
    tinyq_status st;
    const tinyq_code code = tinyq_sidecar_load(input.c_str(), &sc, &st);
    EXPECT_STREQ(tinyq_code_name(code), expect["status"].get<std::string>().c_str()) << st.message;
    EXPECT_EQ(st.code, code);
    if (expect.contains("message_contains")) {
      EXPECT_NE(std::string(st.message).find(expect["message_contains"].get<std::string>()), std::string::npos) << st.message;
    }
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

TEST(Sidecar, AFifoIsRefusedWithoutBlocking) {
  const fs::path fifo = MakeFifo("fifo.json");
  tinyq_sidecar* sc = nullptr;
  tinyq_status st;
  const tinyq_code code = Promptly<tinyq_code>([&] { return tinyq_sidecar_load(fifo.c_str(), &sc, &st); }, fifo);
  EXPECT_EQ(code, TINYQ_E_IO) << st.message;
  EXPECT_EQ(sc, nullptr);
  EXPECT_NE(std::string(st.message).find(fifo.string() + ": not a regular file (a FIFO)"), std::string::npos) << st.message;
}

TEST(Sidecar, ADirectoryIsRefused) {
  const fs::path dir = TmpDir() / "dir.json";
  fs::create_directories(dir);
  tinyq_sidecar* sc = nullptr;
  tinyq_status st;
  EXPECT_EQ(tinyq_sidecar_load(dir.c_str(), &sc, &st), TINYQ_E_IO);
  EXPECT_EQ(sc, nullptr);
  EXPECT_NE(std::string(st.message).find(dir.string() + ": not a regular file (a directory)"), std::string::npos) << st.message;
}

TEST(Sidecar, ADeviceIsRefused) {
  tinyq_sidecar* sc = nullptr;
  tinyq_status st;
  EXPECT_EQ(tinyq_sidecar_load("/dev/zero", &sc, &st), TINYQ_E_IO);
  EXPECT_NE(std::string(st.message).find("/dev/zero: not a regular file (a character device)"), std::string::npos) << st.message;
}

TEST(Sidecar, ALinkToAFifoIsRefused) {
  const fs::path fifo = MakeFifo("linked_fifo");
  const fs::path link = TmpDir() / "link.json";
  fs::remove(link);
  fs::create_symlink(fifo, link);
  tinyq_sidecar* sc = nullptr;
  tinyq_status st;
  EXPECT_EQ(Promptly<tinyq_code>([&] { return tinyq_sidecar_load(link.c_str(), &sc, &st); }, fifo), TINYQ_E_IO);
  EXPECT_NE(std::string(st.message).find("not a regular file (a FIFO)"), std::string::npos) << st.message;
}

TEST(Sidecar, OversizeFromMemoryReportsItsSize) {
  const std::string data(TINYQ_MAX_SIDECAR_BYTES + 7, ' ');
  tinyq_sidecar* sc = nullptr;
  tinyq_status st;
  EXPECT_EQ(tinyq_sidecar_parse(data.data(), data.size(), &sc, &st), TINYQ_E_TOO_LARGE);
  EXPECT_STREQ(st.message, "the sidecar is 1048583 bytes, larger than 1048576 bytes (1 MiB cap)");
}

TEST(Sidecar, ABillionByteSidecarIsRefusedUnreadWithItsRealSize) {
  const fs::path p = TmpDir() / "huge.json";
  std::ofstream(p, std::ios::binary).close();
  fs::resize_file(p, uint64_t{1} << 30);  // sparse
  tinyq_sidecar* sc = nullptr;
  tinyq_status st;
  EXPECT_EQ(tinyq_sidecar_load(p.c_str(), &sc, &st), TINYQ_E_TOO_LARGE);
  EXPECT_EQ(std::string(st.message), p.string() + ": the sidecar is 1073741824 bytes, larger than 1048576 bytes (1 MiB cap)");
  EXPECT_EQ(std::string(st.message).find("1048577"), std::string::npos);
}

// A 1 MiB sidecar can nest 500,000 deep: nlohmann's DOM copy, dump and destruction recurse, so
// before the depth limit this overflowed the stack (in "arch", which is dumped).
TEST(Sidecar, NestingFarPastTheLimitIsRefusedWithoutACrash) {
  const size_t n = TINYQ_MAX_SIDECAR_BYTES / 2 - 40;
  const std::string data = R"({"id":"m","arch":)" + std::string(n, '[') + std::string(n, ']') + "}";
  ASSERT_LE(data.size(), static_cast<size_t>(TINYQ_MAX_SIDECAR_BYTES));
  tinyq_sidecar* sc = nullptr;
  tinyq_status st;
  EXPECT_EQ(tinyq_sidecar_parse(data.data(), data.size(), &sc, &st), TINYQ_E_LIMIT);
  EXPECT_NE(std::string(st.message).find("over the limit of 64"), std::string::npos) << st.message;
}

TEST(Sidecar, CodeNames) {
  EXPECT_STREQ(tinyq_code_name(TINYQ_E_DUPLICATE_KEY), "duplicate_key");
  EXPECT_STREQ(tinyq_code_name(TINYQ_E_ONNX_PATH_ESCAPE), "onnx_path_escape");
  EXPECT_STREQ(tinyq_code_name(TINYQ_E_UPDATE_INTERRUPTED), "update_interrupted");
}

TEST(Sha256, RefusesAFifoADirectoryAndADevice) {  // /dev/zero would never end, /dev/null hashes as empty
  const fs::path fifo = MakeFifo("fifo.onnx");
  char hex[65];
  tinyq_status st;
  EXPECT_EQ(Promptly<tinyq_code>([&] { return tinyq_sha256_file(fifo.c_str(), hex, &st); }, fifo), TINYQ_E_IO);
  EXPECT_NE(std::string(st.message).find(fifo.string() + ": not a regular file (a FIFO)"), std::string::npos) << st.message;
  EXPECT_EQ(tinyq_sha256_file(TmpDir().c_str(), hex, &st), TINYQ_E_IO);
  EXPECT_NE(std::string(st.message).find("not a regular file (a directory)"), std::string::npos) << st.message;
  EXPECT_EQ(tinyq_sha256_file("/dev/null", hex, &st), TINYQ_E_IO);
  EXPECT_NE(std::string(st.message).find("/dev/null: not a regular file (a character device)"), std::string::npos) << st.message;
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
