// Multiple-choice task sets turned into lm-evaluation-harness requests: every item becomes one
// (context, continuation) pair per choice, with the harness's templates (docs/EVALUATION.md writes
// them out). Loaders read the shipped files (ARC, BoolQ, HellaSwag, WinoGrande, MMLU) or a generic
// JSONL file; a malformed record is a toga::Error naming the file and line.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace toga {

struct TaskRequest {
  std::string context;
  std::string continuation;  // includes the target delimiter (" ")
};

struct TaskItem {
  std::string id;                     // stable per task: the record's id, or "subject/row" for MMLU
  int64_t doc_index = 0;              // position in the evaluated split (the harness's doc_id)
  std::string subject;                // MMLU subject; empty elsewhere
  std::vector<TaskRequest> requests;  // one per choice
  // The harness's doc_to_choice strings; acc_norm divides by their length in code points. For
  // WinoGrande these are the filled-in contexts, as in the harness (it reports acc only).
  std::vector<std::string> choices;
  int label = -1;
};

struct Task {
  std::string name;    // "arc_easy", ..., or "file:PATH"
  std::string source;  // file or directory it came from
  bool reports_acc_norm = false;  // the harness reports acc_norm for this task
  std::vector<TaskItem> items;
};

struct TaskLoadOptions {
  int fewshot = 0;     // examples prepended to each context
  uint64_t seed = 1234;  // few-shot sampling for tasks without a few-shot split
  int64_t limit = 0;   // first N items (per subject for MMLU, as the harness applies it per subtask); 0 = all
};

// The six tasks of `--tasks all`, in report order.
const std::vector<std::string>& standard_task_names();

// A task by name (arc_easy, arc_challenge, boolq, hellaswag, winogrande, mmlu) from the shared data
// directory `data_dir` (holding tasks/...), or "file:PATH" for a generic JSONL task.
Task load_task(const std::string& name, const std::string& data_dir, const TaskLoadOptions& opts = {});

// The loaders behind load_task, one per file layout.
Task load_arc(const std::string& path, const std::string& name, const TaskLoadOptions& opts);
Task load_boolq(const std::string& path, const TaskLoadOptions& opts);
Task load_hellaswag(const std::string& bz2_path, const TaskLoadOptions& opts);
Task load_winogrande(const std::string& jsonl_path, const std::string& labels_path, const TaskLoadOptions& opts);
Task load_mmlu(const std::string& dir, const TaskLoadOptions& opts);
// {"context": str, "choices": [str, ...], "label": int} per line; continuation = " " + choice.
Task load_generic_jsonl(const std::string& path, const TaskLoadOptions& opts);

// The MMLU category (stem, humanities, social_sciences, other) of a subject, as the harness groups it.
std::string mmlu_category(const std::string& subject);

// --- helpers shared with the scorer and the tests ---

// A whole bzip2 file decompressed in memory (libbz2); errors name the file.
std::string read_bz2(const std::string& path);
// Python's str.strip / rstrip: removes Unicode white space (as str.isspace counts it) at the ends.
std::string python_strip(const std::string& s);
std::string python_rstrip(const std::string& s);
// len() of a UTF-8 string as Python counts it: code points, not bytes.
int64_t utf8_length(const std::string& s);
// The harness's HellaSwag preprocess(): strip, " [title]" -> ". ", drop "[...]", "  " -> " ".
std::string hellaswag_preprocess(const std::string& text);
// RFC 4180 CSV (quoted fields may hold commas, newlines and doubled quotes), as Python's csv reads it.
std::vector<std::vector<std::string>> parse_csv(const std::string& text, const std::string& path);

}  // namespace toga
