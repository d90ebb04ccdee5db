#include <bzlib.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <functional>

#include "eval/task_data.h"
#include "eval/tasks.h"
#include "io/checkpoint.h"
#include "model/model.h"
#include "model/runtime_export.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

using namespace toga;
using namespace toga::test;

namespace {

struct Stories {
  Model model;
  std::unique_ptr<Tokenizer> tok;
};

const Stories& stories() {
  static Stories s = [] {
    Stories x;
    x.model = load_model(open_checkpoint(stories260k_path()));
    x.tok = load_tokenizer(stories260k_path(), stories260k_tokenizer());
    return x;
  }();
  return s;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::vector<std::vector<EncodedRequest>> encode_task(const Tokenizer& tok, const Task& t) {
  std::vector<std::vector<EncodedRequest>> g;
  for (const auto& it : t.items) {
    g.emplace_back();
    for (const auto& r : it.requests) g.back().push_back(encode_request(tok, r.context, r.continuation));
  }
  return g;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no toga::Error)";
}

// Hand-made items that exercise the planner: shared and unshared prefixes, a choice that is a
// prefix of another, identical choices, single-token choices (one shared position), and contexts of
// different lengths (WinoGrande-style).
std::vector<std::vector<EncodedRequest>> tricky_groups(const Tokenizer& tok) {
  std::vector<std::vector<std::pair<std::string, std::string>>> items = {
      {{"Once upon a time, there was a little girl named", " Lily"},
       {"Once upon a time, there was a little girl named", " Lily. She loved to play"},
       {"Once upon a time, there was a little girl named", " Sue"},
       {"Once upon a time, there was a little girl named", " Sue"}},
      {{"The dog ran to the", " park."}, {"The dog ran to the", " tree and barked at the cat."}},
      {{"Tom had a red ball", " and he was happy."}, {"Tom had a big blue ball", " and he was happy."}},
      {{"She said:", " yes"}, {"She said:", " no"}},
      {{"One day, ", "a bird"}, {"One day, ", "the sun came out"}},
      {{"", " Once upon a time"}, {"", " The end"}},
      // Same context length as the next two: their prefixes run as one batch.
      {{"Lily saw a big dog", " and ran away."}, {"Lily saw a big dog", " and smiled."}},
      {{"Lily saw a big cat", " and ran away."}, {"Lily saw a big cat", " in the tree."}},
      {{"Lily saw a big car", " and ran away."}, {"Lily saw a big car", " go by."}, {"Lily saw a big car", "!"}},
  };
  std::vector<std::vector<EncodedRequest>> g;
  for (const auto& it : items) {
    g.emplace_back();
    for (const auto& [c, x] : it) g.back().push_back(encode_request(tok, c, x));
  }
  return g;
}

}  // namespace

TEST(Tasks, SharedPrefixScoresEqualOneForwardPerChoice) {
  TOGA_REQUIRE_FILE(stories260k_path());
  const auto& s = stories();
  const auto groups = tricky_groups(*s.tok);
  for (int64_t batch_tokens : {int64_t(8192), int64_t(1)}) {  // 1: every suffix row in its own forward
    ScoreOptions o;
    o.progress = false;
    o.batch_tokens = batch_tokens;
    ScoreStats st;
    const auto got = score_request_groups(s.model, groups, o, &st);
    ASSERT_EQ(got.size(), groups.size());
    for (size_t g = 0; g < groups.size(); ++g)
      for (size_t r = 0; r < groups[g].size(); ++r) {
        const auto ref = score_request_naive(s.model, groups[g][r]);
        EXPECT_NEAR(got[g][r].ll, ref.ll, 1e-4) << "group " << g << " request " << r;
        EXPECT_EQ(got[g][r].greedy, ref.greedy) << "group " << g << " request " << r;
        EXPECT_LT(got[g][r].ll, 0.0);
      }
    EXPECT_LT(st.tokens_forwarded, st.tokens_requested);
  }
}

TEST(Tasks, RuntimeForwardScoresEqualOneForwardPerChoice) {
  TOGA_REQUIRE_FILE(stories260k_path());
  const auto& s = stories();
  const auto groups = tricky_groups(*s.tok);
  const auto runtime = export_runtime(s.model);
  for (int64_t max_length : {int64_t(0), int64_t(8)}) {  // 8: contexts cut from the left
    std::vector<std::vector<EncodedRequest>> fit;
    for (const auto& g : groups)
      if (max_length == 0 || std::all_of(g.begin(), g.end(), [&](const EncodedRequest& r) {
            return int64_t(r.continuation.size()) <= max_length;
          }))
        fit.push_back(g);
    ScoreOptions o;
    o.progress = false;
    o.max_length = max_length;
    ScoreStats st;
    const auto got = score_request_groups(*runtime, s.model.config.max_position_embeddings, fit, o, &st);
    ASSERT_EQ(got.size(), fit.size());
    for (size_t g = 0; g < fit.size(); ++g)
      for (size_t r = 0; r < fit[g].size(); ++r) {
        const auto ref = score_request_naive(s.model, fit[g][r], max_length);
        EXPECT_NEAR(got[g][r].ll, ref.ll, 1e-4) << "group " << g << " request " << r;
        EXPECT_EQ(got[g][r].greedy, ref.greedy) << "group " << g << " request " << r;
      }
    EXPECT_LT(st.tokens_forwarded, st.tokens_requested);
  }
}

TEST(Tasks, LeftTruncationMatchesHarness) {
  TOGA_REQUIRE_FILE(stories260k_path());
  const auto& s = stories();
  const auto groups = tricky_groups(*s.tok);
  ScoreOptions o;
  o.progress = false;
  o.max_length = 8;  // shorter than most requests: contexts are cut from the left
  std::vector<std::vector<EncodedRequest>> fit;  // the harness refuses continuations beyond the window
  for (const auto& g : groups)
    if (std::all_of(g.begin(), g.end(), [](const EncodedRequest& r) { return r.continuation.size() <= 8; }))
      fit.push_back(g);
  ASSERT_GE(fit.size(), 4u);
  const auto got = score_request_groups(s.model, fit, o);
  for (size_t g = 0; g < fit.size(); ++g)
    for (size_t r = 0; r < fit[g].size(); ++r)
      EXPECT_NEAR(got[g][r].ll, score_request_naive(s.model, fit[g][r], 8).ll, 1e-4) << g << "/" << r;
  const EncodedRequest too_long{{1}, std::vector<int>(9, 5)};
  EXPECT_THROW(score_request_groups(s.model, {{too_long}}, o), Error);
}

TEST(Tasks, EncodePairFollowsHarness) {
  TOGA_REQUIRE_FILE(stories260k_path());
  const auto& tok = *stories().tok;
  // Trailing white space of the context belongs to the continuation.
  const auto a = encode_request(tok, "She said: ", "yes");
  const auto b = encode_request(tok, "She said:", " yes");
  EXPECT_EQ(a.context, b.context);
  EXPECT_EQ(a.continuation, b.continuation);
  // The llama2.c tokenizer adds BOS: it leads the context, as HF's tokenizer() puts it there.
  ASSERT_FALSE(b.context.empty());
  EXPECT_EQ(b.context[0], tok.bos_id);
  // Empty context: the prefix token (BOS) alone conditions the continuation.
  const auto e = encode_request(tok, "", " Once upon a time");
  EXPECT_EQ(e.context, std::vector<int>{tok.bos_id});
  EXPECT_EQ(e.continuation, tok.encode(" Once upon a time"));
}

TEST(Tasks, ContinuationTokenMergingWithContextIsTheWholeEncodingsTail) {
  TOGA_REQUIRE_FILE(smollm2_path());
  const auto tok = load_tokenizer(smollm2_path());
  auto pieces = [&](const std::vector<int>& ids) {
    std::vector<std::string> p;
    for (int id : ids) p.push_back(tok->id_to_piece(id));
    return p;
  };
  using P = std::vector<std::string>;
  // "cat" + "apult": the whole text is [It, Ġis, Ġa, Ġcatap, ult] but encode("It is a cat") ends in
  // Ġcat. The harness keeps encode(context) and takes the continuation as whole[len(context):], so
  // "ult" is scored after "... Ġcat" and "Ġcatap" is never seen.
  auto r = encode_request(*tok, "It is a cat", "apult");
  EXPECT_EQ(pieces(r.context), (P{"It", "Ġis", "Ġa", "Ġcat"}));
  EXPECT_EQ(pieces(r.continuation), (P{"ult"}));
  // "hel" + "lo world": Ġhello spans the boundary; only Ġworld remains for the continuation.
  r = encode_request(*tok, "He said hel", "lo world");
  EXPECT_EQ(pieces(r.context), (P{"He", "Ġsaid", "Ġhel"}));
  EXPECT_EQ(pieces(r.continuation), (P{"Ġworld"}));
  // "sandw" + "iches" is one token fewer than the context alone: nothing is left to score.
  r = encode_request(*tok, "I ate a sandw", "iches");
  EXPECT_EQ(pieces(r.context), (P{"I", "Ġate", "Ġa", "Ġsand", "w"}));
  EXPECT_TRUE(r.continuation.empty());
  // No merge: the ordinary case (trailing space moved, " yes" after "Answer:").
  r = encode_request(*tok, "Question: is it?\nAnswer: ", "yes");
  EXPECT_EQ(pieces(r.continuation), (P{"Ġyes"}));
  EXPECT_EQ(pieces(r.context).back(), ":");
  // SmolLM2's tokenizer adds no BOS.
  EXPECT_EQ(r.context, tok->encode("Question: is it?\nAnswer:", true));
}

TEST(Tasks, EmptyContinuationScoresZeroAsTheHarnessDoes) {
  TOGA_REQUIRE_FILE(stories260k_path());
  const auto& s = stories();
  const EncodedRequest empty{s.tok->encode("Once upon a time"), {}};
  const EncodedRequest some = encode_request(*s.tok, "Once upon a time", " there");
  ScoreOptions o;
  o.progress = false;
  const auto got = score_request_groups(s.model, {{empty, some}}, o);
  EXPECT_EQ(got[0][0].ll, 0.0);
  EXPECT_TRUE(got[0][0].greedy);
  EXPECT_NEAR(got[0][1].ll, score_request_naive(s.model, some).ll, 1e-5);
}

TEST(Tasks, AccNormDividesByCodePointsNotBytes) {
  EXPECT_EQ(utf8_length("abcd"), 4);
  EXPECT_EQ(utf8_length("ééé"), 3);   // 6 bytes
  EXPECT_EQ(utf8_length("日本"), 2);  // 6 bytes
  TaskItem item;
  item.choices = {"ééé", "abcd"};
  item.label = 1;
  // Per character: -1.1 vs -1.0 (choice 1 wins); per byte it would be -0.55 vs -1.0 (choice 0).
  const auto r = judge_item(item, {{-3.3, false}, {-4.0, false}});
  EXPECT_EQ(r.pred, 0);
  EXPECT_EQ(r.pred_norm, 1);
  // np.argmax: ties go to the first.
  EXPECT_EQ(judge_item(item, {{-2.0, false}, {-2.0, false}}).pred, 0);
}

TEST(Tasks, WinoGrandePartialScoring) {
  ScratchDir dir;
  write_file(dir / "dev.jsonl",
             "{\"qID\": \"q1\", \"sentence\": \"The dog chased the cat because _ was hungry.\", \"option1\": "
             "\"the dog\", \"option2\": \"the cat\", \"answer\": \"1\"}\n"
             "{\"qID\": \"q2\", \"sentence\": \"Lily gave Sue a cake since _ was kind.\", \"option1\": \"Lily\", "
             "\"option2\": \"Sue\", \"answer\": \"2\"}\n");
  write_file(dir / "labels.lst", "1\n2\n");
  const Task t = load_winogrande(dir / "dev.jsonl", dir / "labels.lst", {});
  ASSERT_EQ(t.items.size(), 2u);
  const auto& it = t.items[0];
  ASSERT_EQ(it.requests.size(), 2u);
  // Each option completes the prefix; the shared text after the blank is what gets scored.
  EXPECT_EQ(it.requests[0].context, "The dog chased the cat because the dog");
  EXPECT_EQ(it.requests[1].context, "The dog chased the cat because the cat");
  EXPECT_EQ(it.requests[0].continuation, " was hungry.");
  EXPECT_EQ(it.requests[1].continuation, " was hungry.");
  EXPECT_EQ(it.label, 0);
  EXPECT_EQ(t.items[1].label, 1);
  EXPECT_FALSE(t.reports_acc_norm);

  TOGA_REQUIRE_FILE(stories260k_path());
  const auto& s = stories();
  ScoreOptions o;
  o.progress = false;
  const auto groups = encode_task(*s.tok, t);
  const auto got = score_request_groups(s.model, groups, o);
  for (size_t g = 0; g < groups.size(); ++g)
    for (size_t r = 0; r < 2; ++r) {
      // Only the text after the blank is scored, the same tokens whichever option fills it.
      EXPECT_EQ(groups[g][r].continuation, groups[g][0].continuation);
      EXPECT_GE(groups[g][r].continuation.size(), 3u);
      EXPECT_NEAR(got[g][r].ll, score_request_naive(s.model, groups[g][r]).ll, 1e-4);
    }

  // A labels file that disagrees with the records is an error naming it.
  write_file(dir / "bad.lst", "2\n2\n");
  const std::string err = error_of([&] { load_winogrande(dir / "dev.jsonl", dir / "bad.lst", {}); });
  EXPECT_NE(err.find("bad.lst"), std::string::npos) << err;
  EXPECT_NE(err.find("line 1"), std::string::npos) << err;
}

TEST(Tasks, MalformedFilesNameFileAndLine) {
  ScratchDir dir;
  const std::string p = dir / "task.jsonl";
  write_file(p, "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"label\": 0}\n\n"
                "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"label\": 2}\n");
  std::string err = error_of([&] { load_generic_jsonl(p, {}); });
  EXPECT_NE(err.find(p + ": line 3"), std::string::npos) << err;
  EXPECT_NE(err.find("label"), std::string::npos) << err;

  write_file(p, "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"label\": 0}\n{\"context\": \"a\", \"choices\": [\"b\"\n");
  err = error_of([&] { load_generic_jsonl(p, {}); });
  EXPECT_NE(err.find(p + ": line 2: not valid JSON"), std::string::npos) << err;

  write_file(p, "{\"choices\": [\"b\", \"c\"], \"label\": 0}\n");
  err = error_of([&] { load_generic_jsonl(p, {}); });
  EXPECT_NE(err.find(p + ": line 1: missing field \"context\""), std::string::npos) << err;

  const std::string arc = dir / "arc.jsonl";
  write_file(arc, "{\"id\": \"x\", \"question\": {\"stem\": \"Q?\", \"choices\": [{\"text\": \"a\", \"label\": \"A\"}]}, "
                  "\"answerKey\": \"C\"}\n");
  err = error_of([&] { load_arc(arc, "arc_easy", {}); });
  EXPECT_NE(err.find(arc + ": line 1: answerKey \"C\""), std::string::npos) << err;

  std::filesystem::create_directories(dir / "mmlu/test");
  const std::string csv = dir / "mmlu/test/anatomy_test.csv";
  write_file(csv, "q1,a,b,c,d,A\nq2,a,b,c,d\n");
  err = error_of([&] { load_mmlu(dir / "mmlu", {}); });
  EXPECT_NE(err.find(csv + ": row 2: expected 6 fields"), std::string::npos) << err;

  err = error_of([&] { load_task("nosuchtask", dir.path(), {}); });
  EXPECT_NE(err.find("unknown task 'nosuchtask'"), std::string::npos) << err;
}

TEST(Tasks, TemplatesOfTheHarness) {
  ScratchDir dir;
  // ARC.
  write_file(dir / "arc.jsonl",
             "{\"id\": \"x1\", \"question\": {\"stem\": \"Which is a planet?\", \"choices\": [{\"text\": \"Moon\", "
             "\"label\": \"1\"}, {\"text\": \"Mars\", \"label\": \"2\"}]}, \"answerKey\": \"2\"}\n");
  const Task arc = load_arc(dir / "arc.jsonl", "arc_easy", {});
  EXPECT_EQ(arc.items[0].requests[1].context, "Question: Which is a planet?\nAnswer:");
  EXPECT_EQ(arc.items[0].requests[1].continuation, " Mars");
  EXPECT_EQ(arc.items[0].label, 1);
  EXPECT_TRUE(arc.reports_acc_norm);
  // BoolQ: string labels.
  write_file(dir / "boolq.jsonl", "{\"question\": \"is it red\", \"passage\": \"It is red.\", \"label\": \"true\"}\n"
                                  "{\"question\": \"is it blue\", \"passage\": \"It is red.\", \"label\": \"false\"}\n");
  const Task bq = load_boolq(dir / "boolq.jsonl", {});
  EXPECT_EQ(bq.items[0].requests[0].context, "It is red.\nQuestion: is it red?\nAnswer:");
  EXPECT_EQ(bq.items[0].requests[0].continuation, " no");
  EXPECT_EQ(bq.items[0].requests[1].continuation, " yes");
  EXPECT_EQ(bq.items[0].label, 1);
  EXPECT_EQ(bq.items[1].label, 0);
  // MMLU: header, stripped question, lettered choices; few-shot from the first dev rows.
  std::filesystem::create_directories(dir / "mmlu/test");
  std::filesystem::create_directories(dir / "mmlu/dev");
  write_file(dir / "mmlu/test/college_physics_test.csv", "\"  What, is \"\"g\"\"?\n\",1,\"9.8\",3,4,B\n");
  write_file(dir / "mmlu/dev/college_physics_dev.csv", "Dev q?,w,x,y,z,D\nDev q2?,w,x,y,z,A\n");
  TaskLoadOptions fs;
  fs.fewshot = 1;
  const Task m = load_mmlu(dir / "mmlu", fs);
  ASSERT_EQ(m.items.size(), 1u);
  EXPECT_EQ(m.items[0].requests[2].context,
            "The following are multiple choice questions (with answers) about college physics.\n\n"
            "Dev q?\nA. w\nB. x\nC. y\nD. z\nAnswer: D\n\n"
            "What, is \"g\"?\nA. 1\nB. 9.8\nC. 3\nD. 4\nAnswer:");
  EXPECT_EQ(m.items[0].requests[2].continuation, " C");
  EXPECT_EQ(m.items[0].label, 1);
  EXPECT_EQ(m.items[0].subject, "college_physics");
  EXPECT_EQ(mmlu_category("college_physics"), "stem");
  // HellaSwag: 6 lines per item in a bzip2 file, decompressed in-process.
  const std::string text =
      "Roof shingle removal: A man is sitting on a roof. he\n3\nis using wrap.\nis ripping  tiles off.\n"
      "is [header] holding a cube.\nstarts pulling up roofing.\n"
      "Clean and jerk: A lady walks to a barbell. the lady\n0\nswings.\npulls.\nstands.\nlifts.\n";
  std::vector<char> packed(text.size() * 2 + 600);
  unsigned packed_len = unsigned(packed.size());
  ASSERT_EQ(BZ2_bzBuffToBuffCompress(packed.data(), &packed_len, const_cast<char*>(text.data()), unsigned(text.size()),
                                     9, 0, 0),
            BZ_OK);
  write_file(dir / "hs.txt.bz2", std::string(packed.data(), packed_len));
  EXPECT_EQ(read_bz2(dir / "hs.txt.bz2"), text);
  const Task hs = load_hellaswag(dir / "hs.txt.bz2", {});
  ASSERT_EQ(hs.items.size(), 2u);
  EXPECT_EQ(hs.items[0].label, 3);
  EXPECT_EQ(hs.items[0].requests[0].context, "Roof shingle removal: A man is sitting on a roof. he");
  EXPECT_EQ(hs.items[0].requests[1].continuation, " is ripping tiles off.");
  EXPECT_EQ(hs.items[0].choices[2], "is holding a cube.");
  write_file(dir / "broken.bz2", std::string(packed.data(), packed_len / 2));
  const std::string err = error_of([&] { read_bz2(dir / "broken.bz2"); });
  EXPECT_NE(err.find("broken.bz2"), std::string::npos) << err;
  // --limit keeps the first N (per subject for MMLU).
  TaskLoadOptions lim;
  lim.limit = 1;
  EXPECT_EQ(load_boolq(dir / "boolq.jsonl", lim).items.size(), 1u);
}

TEST(Tasks, TextHelpersBehaveLikePython) {
  EXPECT_EQ(python_strip("\xC2\xA0 a b\t\n"), "a b");  // NBSP is white space to Python
  EXPECT_EQ(python_rstrip("  a  "), "  a");
  EXPECT_EQ(hellaswag_preprocess(" How to cook [title] Boil water. [step] Add  salt. "),
            "How to cook. Boil water. Add salt.");
  const auto rows = parse_csv("a,\"b,c\",\"d\"\"e\"\n\"multi\nline\",x\n", "mem.csv");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0], (std::vector<std::string>{"a", "b,c", "d\"e"}));
  EXPECT_EQ(rows[1], (std::vector<std::string>{"multi\nline", "x"}));
  // The harness's sample stderr of a mean: sqrt(p(1-p)/(n-1)) for 0/1 scores.
  EXPECT_NEAR(mean_stderr(3, 3, 4), std::sqrt(0.75 * 0.25 / 3.0), 1e-12);
}

TEST(Tasks, StoriesModelEndToEnd) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  write_file(dir / "t.jsonl",
             "{\"context\": \"Once upon a time, there was a little\", \"choices\": [\"girl\", \"xylophone quantum\"], "
             "\"label\": 0}\n"
             "{\"context\": \"Lily went to the\", \"choices\": [\"park\", \"\\u00e9\\u00e9\"], \"label\": 0}\n");
  const Task t = load_task("file:" + (dir / "t.jsonl"), "", {});
  ScoreOptions o;
  o.progress = false;
  const auto r = evaluate_task(stories().model, *stories().tok, t, o);
  EXPECT_EQ(r.n, 2);
  EXPECT_TRUE(r.reports_acc_norm);
  EXPECT_EQ(r.items[0].pred, 0);  // the in-domain word wins
  const auto lines = item_records(t, r);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[1]["choice_len"][1], 2);
}
