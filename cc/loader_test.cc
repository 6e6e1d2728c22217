// The verified loader against the cases in tests/vectors/loader/, under both policies.
#include "cc/tinyq/loader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iterator>
#include <string>
#include <thread>

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

// Runs call, which must return within 5 s; a reader blocked on a FIFO in dir (the bug) is released
// by opening each for writing, so a regression fails instead of hanging.
tinyq_code Promptly(const std::function<tinyq_code()>& call, const fs::path& dir) {
  auto result = std::async(std::launch::async, call);
  if (result.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
    ADD_FAILURE() << "blocked on a FIFO in " << dir;
    while (result.wait_for(std::chrono::milliseconds(100)) != std::future_status::ready) {
      for (const auto& e : fs::directory_iterator(dir)) {
        if (!fs::is_fifo(e.symlink_status())) continue;
        const int w = ::open(e.path().c_str(), O_WRONLY | O_NONBLOCK);
        if (w >= 0) ::close(w);
      }
    }
  }
  return result.get();
}

// Replaces file with a FIFO of the same name.
void ReplaceWithFifo(const fs::path& file) {
  fs::remove(file);
  ASSERT_EQ(::mkfifo(file.c_str(), 0600), 0);
}

std::string Slurp(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

std::string Sha256(const fs::path& path) {
  char hex[65];
  tinyq_status st;
  EXPECT_EQ(tinyq_sha256_file(path.c_str(), hex, &st), TINYQ_OK) << st.message;
  return hex;
}

// tinyq_resolve_bytes agrees with tinyq_resolve, and hands out the bytes it verified.
void ExpectSameAsBytes(const std::string& model, tinyq_policy policy, const fs::path& dir, const tinyq_resolution& want) {
  tinyq_resolution res;
  tinyq_status st;
  tinyq_verified_bytes bytes;
  ASSERT_EQ(tinyq_resolve_bytes(model.c_str(), policy, dir.c_str(), &res, &bytes, &st), TINYQ_OK) << st.message;
  EXPECT_STREQ(res.path, want.path);
  EXPECT_STREQ(res.sha256, want.sha256);
  EXPECT_EQ(res.mode, want.mode);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(bytes.data), bytes.size), Slurp(res.path));
  tinyq_verified_bytes_free(&bytes);
  EXPECT_EQ(bytes.data, nullptr);
  EXPECT_EQ(bytes.size, 0u);
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
      ExpectSameAsBytes(model, policy, dir, res);
    }
    ++cases;
  }
  EXPECT_GE(cases, 9);
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

TEST(Loader, AFifoSidecarIsRefusedPromptly) {
  const fs::path dir = Materialise("tests/vectors/loader/int8_verified", json::object());
  ReplaceWithFifo(dir / "model.json");
  tinyq_resolution res;
  tinyq_status st;
  const std::string model = (dir / "model.onnx").string();
  EXPECT_EQ(Promptly([&] { return tinyq_resolve(model.c_str(), TINYQ_FALLBACK_FP32, dir.c_str(), &res, &st); }, dir),
            TINYQ_E_IO);
  EXPECT_NE(std::string(st.message).find((dir / "model.json").string() + ": not a regular file (a FIFO)"), std::string::npos)
      << st.message;
}

TEST(Loader, AFifoModelIsRefusedPromptly) {
  const fs::path dir = Materialise("tests/vectors/loader/int8_verified", json::object());
  const std::string model = (dir / "model.onnx").string();
  tinyq_resolution res;
  tinyq_status st;
  // The int8 file a FIFO: refused under fail-closed; the fallback verifies the real fp32 file.
  ReplaceWithFifo(dir / "model.int8.onnx");
  EXPECT_EQ(Promptly([&] { return tinyq_resolve(model.c_str(), TINYQ_FAIL_CLOSED, dir.c_str(), &res, &st); }, dir),
            TINYQ_E_IO);
  EXPECT_NE(std::string(st.message).find("model.int8.onnx: not a regular file (a FIFO)"), std::string::npos) << st.message;
  ASSERT_EQ(Promptly([&] { return tinyq_resolve(model.c_str(), TINYQ_FALLBACK_FP32, dir.c_str(), &res, &st); }, dir),
            TINYQ_OK) << st.message;
  EXPECT_TRUE(res.fell_back);
  EXPECT_EQ(fs::path(res.path).filename(), "model.onnx");
  // The fp32 file a FIFO too.
  ReplaceWithFifo(dir / "model.onnx");
  EXPECT_EQ(Promptly([&] { return tinyq_resolve(model.c_str(), TINYQ_FALLBACK_FP32, dir.c_str(), &res, &st); }, dir),
            TINYQ_E_IO);
  EXPECT_NE(std::string(st.message).find("model.onnx: not a regular file (a FIFO)"), std::string::npos) << st.message;
}

TEST(Loader, DirectoriesInPlaceOfFilesAreRefused) {
  const fs::path dir = Materialise("tests/vectors/loader/int8_verified", json::object());
  const std::string model = (dir / "model.onnx").string();
  tinyq_resolution res;
  tinyq_status st;
  fs::remove(dir / "model.int8.onnx");
  fs::create_directory(dir / "model.int8.onnx");
  EXPECT_EQ(tinyq_resolve(model.c_str(), TINYQ_FAIL_CLOSED, dir.c_str(), &res, &st), TINYQ_E_IO);
  EXPECT_NE(std::string(st.message).find("model.int8.onnx: not a regular file (a directory)"), std::string::npos) << st.message;
  fs::remove(dir / "model.json");
  fs::create_directory(dir / "model.json");
  EXPECT_EQ(tinyq_resolve(model.c_str(), TINYQ_FAIL_CLOSED, dir.c_str(), &res, &st), TINYQ_E_IO);
  EXPECT_NE(std::string(st.message).find("model.json: not a regular file (a directory)"), std::string::npos) << st.message;
}

TEST(Loader, OnnxClimbingOutIsRefusedWithItsOwnCode) {
  const fs::path dir = Materialise("tests/vectors/loader/fp32_mode", json::object());
  const std::string model = (dir / "model.onnx").string();
  json side = json::parse(std::ifstream(dir / "model.json"));
  tinyq_resolution res;
  tinyq_status st;
  for (const char* onnx : {"../../etc/x.onnx", "/etc/x.onnx", "sub/../../x.onnx"}) {
    SCOPED_TRACE(onnx);
    side["onnx"] = onnx;
    std::ofstream(dir / "model.json") << side.dump();
    for (const char* jail : {static_cast<const char*>(nullptr), dir.c_str()}) {
      EXPECT_EQ(tinyq_resolve(model.c_str(), TINYQ_FALLBACK_FP32, jail, &res, &st), TINYQ_E_ONNX_PATH_ESCAPE) << st.message;
      EXPECT_NE(std::string(st.message).find("field 'onnx'"), std::string::npos) << st.message;
    }
  }
  // A relative path that a symlink takes outside the jail: refused with a jail, allowed without.
  const fs::path outside = dir.parent_path() / "onnx_outside";
  fs::create_directories(outside);
  std::ofstream(outside / "model.onnx") << "x";
  fs::remove(dir / "sub");
  fs::create_directory_symlink(outside, dir / "sub");
  side["onnx"] = "sub/model.onnx";
  std::ofstream(dir / "model.json") << side.dump();
  EXPECT_EQ(tinyq_resolve(model.c_str(), TINYQ_FAIL_CLOSED, dir.c_str(), &res, &st), TINYQ_E_ONNX_PATH_ESCAPE) << st.message;
  EXPECT_NE(std::string(st.message).find("outside the model directory"), std::string::npos) << st.message;
  EXPECT_EQ(tinyq_resolve(model.c_str(), TINYQ_FAIL_CLOSED, nullptr, &res, &st), TINYQ_OK) << st.message;
  // Its own name, or one inside the directory, is fine.
  side["onnx"] = "model.onnx";
  std::ofstream(dir / "model.json") << side.dump();
  EXPECT_EQ(tinyq_resolve(model.c_str(), TINYQ_FAIL_CLOSED, dir.c_str(), &res, &st), TINYQ_OK) << st.message;
}

TEST(Loader, AnInterruptedRegistryUpdateFailsClosed) {
  const fs::path dir = Materialise("tests/vectors/loader/int8_verified", json::object());
  const std::string model = (dir / "model.onnx").string();
  tinyq_resolution res;
  tinyq_status st;
  ASSERT_EQ(tinyq_resolve(model.c_str(), TINYQ_FAIL_CLOSED, dir.c_str(), &res, &st), TINYQ_OK) << st.message;
  std::ofstream(dir / ".tinyq-journal.json") << "{}";
  for (const auto policy : {TINYQ_FAIL_CLOSED, TINYQ_FALLBACK_FP32}) {
    for (const char* jail : {static_cast<const char*>(nullptr), dir.c_str()}) {
      EXPECT_EQ(tinyq_resolve(model.c_str(), policy, jail, &res, &st), TINYQ_E_UPDATE_INTERRUPTED) << st.message;
      EXPECT_EQ(std::string(st.message), dir.string() + ": an update of this registry was interrupted (.tinyq-journal.json); "
                                                        "run `bazel run //python:validate_registry` to finish it, then retry");
      EXPECT_STREQ(res.path, "");
    }
  }
  // Even a dangling link of that name counts: the writer's journal is the commit point.
  fs::remove(dir / ".tinyq-journal.json");
  fs::create_symlink("nowhere", dir / ".tinyq-journal.json");
  EXPECT_EQ(tinyq_resolve(model.c_str(), TINYQ_FAIL_CLOSED, nullptr, &res, &st), TINYQ_E_UPDATE_INTERRUPTED);
  fs::remove(dir / ".tinyq-journal.json");
  EXPECT_EQ(tinyq_resolve(model.c_str(), TINYQ_FAIL_CLOSED, nullptr, &res, &st), TINYQ_OK) << st.message;
}

TEST(Loader, AJournalInTheJailAboveTheModelCounts) {
  // A registry whose models live in a subdirectory: its journal sits in the jail (the registry's
  // directory), above the model's.
  const fs::path root = fs::path(std::getenv("TEST_TMPDIR")) / "nested_registry";
  fs::remove_all(root);
  fs::create_directories(root);
  const fs::path dir = Materialise("tests/vectors/loader/int8_verified", json::object());
  fs::rename(dir, root / "models");
  const std::string model = (root / "models" / "model.onnx").string();
  tinyq_resolution res;
  tinyq_status st;
  ASSERT_EQ(tinyq_resolve(model.c_str(), TINYQ_FAIL_CLOSED, root.c_str(), &res, &st), TINYQ_OK) << st.message;
  std::ofstream(root / ".tinyq-journal.json") << "{}";
  EXPECT_EQ(tinyq_resolve(model.c_str(), TINYQ_FAIL_CLOSED, root.c_str(), &res, &st), TINYQ_E_UPDATE_INTERRUPTED) << st.message;
  EXPECT_NE(std::string(st.message).find(fs::canonical(root).string() + ": an update of this registry was interrupted"), std::string::npos)
      << st.message;
  EXPECT_EQ(tinyq_resolve(model.c_str(), TINYQ_FAIL_CLOSED, nullptr, &res, &st), TINYQ_OK) << "without a jail only the model's directory is checked";
}

// The path a resolver returns can be swapped before the caller opens it; the bytes cannot.
TEST(LoaderBytes, WhatWasVerifiedIsWhatIsLoaded) {
  const fs::path dir = Materialise("tests/vectors/loader/int8_verified", json::object());
  const std::string model = (dir / "model.onnx").string();
  const std::string good = Slurp(dir / "model.int8.onnx");
  const fs::path tampered = dir.parent_path() / "tampered.int8.onnx";
  std::ofstream(tampered, std::ios::binary) << good.substr(0, good.size() - 1) << static_cast<char>(good.back() ^ 1);
  tinyq_resolution res;
  tinyq_status st;
  tinyq_verified_bytes bytes;
  ASSERT_EQ(tinyq_resolve(model.c_str(), TINYQ_FAIL_CLOSED, dir.c_str(), &res, &st), TINYQ_OK) << st.message;
  ASSERT_EQ(tinyq_resolve_bytes(model.c_str(), TINYQ_FAIL_CLOSED, dir.c_str(), &res, &bytes, &st), TINYQ_OK) << st.message;
  fs::copy_file(tampered, dir / "model.int8.onnx.new");
  fs::rename(dir / "model.int8.onnx.new", dir / "model.int8.onnx");  // swapped after the check
  EXPECT_NE(Slurp(res.path), good) << "the path now leads to other bytes";
  EXPECT_EQ(std::string(reinterpret_cast<char*>(bytes.data), bytes.size), good);
  tinyq_verified_bytes_free(&bytes);
}

// A writer swapping the int8 file back and forth while it is resolved: every answer is a refusal or
// the pinned bytes, never bytes that differ from the hash reported with them.
TEST(LoaderBytes, ASwapDuringTheReadNeverHandsOutTamperedBytes) {
  const fs::path dir = Materialise("tests/vectors/loader/int8_verified", json::object());
  const std::string model = (dir / "model.onnx").string();
  const std::string good = Slurp(dir / "model.int8.onnx");
  const std::string pinned = Sha256(dir / "model.int8.onnx");
  const std::string bad = std::string(good.size() * 64, 'x');  // larger: its read spans many calls
  std::atomic<bool> stop{false};
  std::thread swapper([&] {
    for (int i = 0; !stop; ++i) {
      const fs::path next = dir / "next.tmp";
      std::ofstream(next, std::ios::binary) << (i % 2 ? good : bad);
      fs::rename(next, dir / "model.int8.onnx");
    }
  });
  int verified = 0, refused = 0;
  for (int i = 0; i < 300; ++i) {
    tinyq_resolution res;
    tinyq_status st;
    tinyq_verified_bytes bytes;
    const tinyq_code code = tinyq_resolve_bytes(model.c_str(), TINYQ_FAIL_CLOSED, dir.c_str(), &res, &bytes, &st);
    if (code == TINYQ_OK) {
      ++verified;
      EXPECT_EQ(std::string(res.sha256), pinned);
      EXPECT_EQ(std::string(reinterpret_cast<char*>(bytes.data), bytes.size), good);
    } else {
      ++refused;
      EXPECT_TRUE(code == TINYQ_E_HASH_MISMATCH || code == TINYQ_E_INT8_MISSING) << tinyq_code_name(code) << ": " << st.message;
      EXPECT_EQ(bytes.data, nullptr);
    }
    tinyq_verified_bytes_free(&bytes);
  }
  stop = true;
  swapper.join();
  EXPECT_EQ(verified + refused, 300);
}

TEST(LoaderBytes, BadArguments) {
  tinyq_resolution res;
  tinyq_status st;
  EXPECT_EQ(tinyq_resolve_bytes("x.onnx", TINYQ_FAIL_CLOSED, nullptr, &res, nullptr, &st), TINYQ_E_INVALID_ARGUMENT);
  tinyq_verified_bytes bytes{reinterpret_cast<unsigned char*>(1), 7};  // whatever was there is overwritten, not freed
  EXPECT_EQ(tinyq_resolve_bytes("no/such/model.onnx", TINYQ_FAIL_CLOSED, nullptr, &res, &bytes, &st), TINYQ_E_IO);
  EXPECT_EQ(bytes.data, nullptr);
  tinyq_verified_bytes_free(nullptr);
  tinyq_verified_bytes_free(&bytes);
}

// tests/vectors/jail/cases.json's layout (the same as //python/tinyq/registry:registry_test's): jail/
// with the model, copies in jail/sub, jail/inner and outside/, then the case's links.
fs::path LayOutJailCase(const fs::path& root, const json& c) {
  fs::remove_all(root);
  for (const char* d : {"jail", "jail/sub", "jail/inner", "outside"}) {
    fs::create_directories(root / d);
    for (const char* name : {"model.onnx", "model.int8.onnx", "model.json"}) {
      fs::copy_file(fs::canonical(fs::path("tests/vectors/loader/int8_verified") / name), root / d / name);
    }
  }
  for (const auto& [name, target_json] : c.at("links").items()) {
    const fs::path link = root / "jail" / name;
    fs::remove_all(link);
    const std::string target = target_json.get<std::string>();
    const fs::path to = target[0] == '@' ? root / target.substr(1) : fs::path(target);
    fs::create_symlink(to, link);
  }
  return root / "jail";
}

TEST(JailVectors, TheRuleSharedWithPythonsValidation) {
  const json cases = json::parse(std::ifstream("tests/vectors/jail/cases.json")).at("cases");
  int i = 0;
  for (const json& c : cases) {
    SCOPED_TRACE(c.at("name").get<std::string>());
    const fs::path jail = LayOutJailCase(fs::path(std::getenv("TEST_TMPDIR")) / ("jail" + std::to_string(i++)), c);
    const std::string model = (jail / c.value("onnx", "model.onnx")).string();
    tinyq_resolution res;
    tinyq_status st;
    const tinyq_code code = tinyq_resolve(model.c_str(), TINYQ_FAIL_CLOSED, jail.c_str(), &res, &st);
    const bool escapes = code == TINYQ_E_PATH_ESCAPE || code == TINYQ_E_ONNX_PATH_ESCAPE;
    EXPECT_EQ(escapes, c.at("escapes").get<bool>()) << tinyq_code_name(code) << ": " << st.message;
    if (!escapes) EXPECT_EQ(code, TINYQ_OK) << st.message;
  }
  EXPECT_GE(i, 13);
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
