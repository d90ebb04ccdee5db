// Outputs never replace what toga did not make: a directory output goes to a new path or, when asked,
// over toga's own earlier output (recognized by its marker); file outputs replace only files, and
// only when asked. A refused or failed write touches nothing.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace toga {
namespace {

void fill(const std::string& dir, const std::string& name, const std::string& content) {
  write_text_atomically((fs::path(dir) / name).string(), content);
}

void write_output(const std::string& dir, OnExisting on, const std::string& content) {
  write_dir_atomically(dir, {"test", on}, [&](const std::string& tmp) { fill(tmp, "weights.bin", content); });
}

// The error message of a refused write (empty if it was not refused).
std::string refusal(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(AtomicDir, NewPathGetsTheOutputAndTheMarker) {
  test::ScratchDir dir;
  const std::string out = dir / "a/b/out";  // parents are created
  write_output(out, OnExisting::kRefuse, "new");
  EXPECT_EQ(read_text_file(out + "/weights.bin"), "new");
  const auto marker = nlohmann::json::parse(read_text_file(out + "/" + kOutputMarker));
  EXPECT_EQ(marker["tool"], "toga");
  EXPECT_EQ(marker["verb"], "test");
  EXPECT_EQ(marker["version"], TOGA_VERSION);
  EXPECT_EQ(marker["files"], nlohmann::json::array({"weights.bin"}));
  for (const auto& e : fs::directory_iterator(dir / "a/b")) EXPECT_EQ(e.path().filename(), "out");
}

TEST(AtomicDir, TogasOwnOutputIsReplacedOnlyWhenAsked) {
  test::ScratchDir dir;
  const std::string out = dir / "out";
  write_output(out, OnExisting::kRefuse, "old");
  const std::string e = refusal([&] { write_output(out, OnExisting::kRefuse, "new"); });
  EXPECT_TRUE(contains(e, out)) << e;
  EXPECT_TRUE(contains(e, "--force")) << e;
  EXPECT_EQ(read_text_file(out + "/weights.bin"), "old");

  write_dir_atomically(out + "/", {"test", OnExisting::kReplace},  // a trailing slash names the same path
                       [&](const std::string& tmp) { fill(tmp, "other.bin", "new"); });
  EXPECT_EQ(read_text_file(out + "/other.bin"), "new");
  EXPECT_FALSE(fs::exists(out + "/weights.bin"));  // the old output is gone as a whole
  for (const auto& entry : fs::directory_iterator(dir.path())) EXPECT_EQ(entry.path().filename(), "out");
}

TEST(AtomicDir, WhatTogaDidNotMakeIsNeverReplaced) {
  test::ScratchDir dir;
  for (OnExisting on : {OnExisting::kRefuse, OnExisting::kReplace}) {
    SCOPED_TRACE(on == OnExisting::kReplace ? "replace" : "refuse");
    // A user's directory.
    const std::string user = dir / "user";
    fs::create_directories(user);
    fill(user, "notes.txt", "mine");
    std::string e = refusal([&] { write_output(user, on, "new"); });
    EXPECT_TRUE(contains(e, user) && contains(e, "did not make")) << e;
    EXPECT_EQ(read_text_file(user + "/notes.txt"), "mine");
    EXPECT_FALSE(fs::exists(user + "/weights.bin"));

    // toga's output with a user's file put into it.
    const std::string mixed = dir / "mixed";
    if (!fs::exists(mixed)) write_output(mixed, OnExisting::kRefuse, "old");
    fill(mixed, "notes.txt", "mine");
    e = refusal([&] { write_output(mixed, on, "new"); });
    EXPECT_TRUE(contains(e, mixed) && contains(e, "notes.txt")) << e;
    EXPECT_EQ(read_text_file(mixed + "/notes.txt"), "mine");
    EXPECT_EQ(read_text_file(mixed + "/weights.bin"), "old");

    // A file.
    const std::string file = dir / "file";
    fill(dir.path(), "file", "a file");
    e = refusal([&] { write_output(file, on, "new"); });
    EXPECT_TRUE(contains(e, file) && contains(e, "not a directory")) << e;
    EXPECT_EQ(read_text_file(file), "a file");

    // A marker that is not toga's does not make a directory toga's.
    const std::string fake = dir / "fake";
    fs::create_directories(fake);
    fill(fake, kOutputMarker, "hello");
    e = refusal([&] { write_output(fake, on, "new"); });
    EXPECT_TRUE(contains(e, "did not make")) << e;
    EXPECT_EQ(read_text_file(fake + "/" + kOutputMarker), "hello");
  }
  for (const auto& entry : fs::directory_iterator(dir.path()))
    EXPECT_FALSE(contains(entry.path().filename().string(), ".tmp.")) << entry.path();
}

TEST(AtomicDir, AnEmptyDirectoryIsReplacedOnlyWhenAsked) {
  test::ScratchDir dir;
  const std::string out = dir / "empty";
  fs::create_directories(out);
  const std::string e = refusal([&] { write_output(out, OnExisting::kRefuse, "new"); });
  EXPECT_TRUE(contains(e, "empty") && contains(e, "--force")) << e;
  write_output(out, OnExisting::kReplace, "new");
  EXPECT_EQ(read_text_file(out + "/weights.bin"), "new");
}

TEST(AtomicDir, AFailedWriteLeavesTheOldOutputAndNoTemporary) {
  test::ScratchDir dir;
  const std::string out = dir / "out";
  write_output(out, OnExisting::kRefuse, "old");
  EXPECT_THROW(write_dir_atomically(out, {"test", OnExisting::kReplace},
                                    [&](const std::string& tmp) {
                                      fill(tmp, "weights.bin", "half");
                                      throw Error("interrupted");
                                    }),
               Error);
  EXPECT_EQ(read_text_file(out + "/weights.bin"), "old");
  // Toga's marker is its own: an output may not bring one.
  const std::string e = refusal([&] {
    write_dir_atomically(dir / "new", {"test", OnExisting::kRefuse},
                         [&](const std::string& tmp) { fill(tmp, kOutputMarker, "{}"); });
  });
  EXPECT_TRUE(contains(e, kOutputMarker)) << e;
  for (const auto& entry : fs::directory_iterator(dir.path())) EXPECT_EQ(entry.path().filename(), "out");
}

TEST(AtomicFile, FilesAreNewOrReplaceAFileWhenAsked) {
  test::ScratchDir dir;
  const std::string f = dir / "r.json";
  write_text_atomically(f, "1", OnExisting::kRefuse);
  std::string e = refusal([&] { write_text_atomically(f, "2", OnExisting::kRefuse); });
  EXPECT_TRUE(contains(e, f) && contains(e, "--force")) << e;
  EXPECT_EQ(read_text_file(f), "1");
  write_text_atomically(f, "2", OnExisting::kReplace);
  EXPECT_EQ(read_text_file(f), "2");

  // A directory is never replaced by a file output.
  const std::string d = dir / "d.json";
  fs::create_directories(d);
  fill(d, "x", "mine");
  for (OnExisting on : {OnExisting::kRefuse, OnExisting::kReplace}) {
    e = refusal([&] { write_text_atomically(d, "{}", on); });
    EXPECT_TRUE(contains(e, d) && contains(e, "directory")) << e;
    EXPECT_THROW(check_output_file(d, on), Error);
  }
  EXPECT_EQ(read_text_file(d + "/x"), "mine");
  EXPECT_NO_THROW(check_output_file(dir / "new.json", OnExisting::kRefuse));
  EXPECT_THROW(check_output_file(f, OnExisting::kRefuse), Error);
  EXPECT_NO_THROW(check_output_file(f, OnExisting::kReplace));
  for (const auto& entry : fs::directory_iterator(dir.path()))
    EXPECT_FALSE(contains(entry.path().filename().string(), ".tmp.")) << entry.path();
}

}  // namespace
}  // namespace toga
