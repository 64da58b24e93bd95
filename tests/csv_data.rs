//! CSV data through the real binary (`batchd trial`, `batchd validate`):
//! quoted fields holding the delimiter, text feature and label columns
//! (one-hot encoded, or mapped to classes), and the files the reader
//! refuses: ragged rows, a text column of too many levels, a delimiter it
//! cannot split on.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::quick_trial;
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A spec in `dir` training a tiny MLP of `model` keys on `data` keys.
fn spec(dir: &Path, name: &str, model: &str, data: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\n[model]\nkind = \"mlp\"\nhidden = [8]\n{model}\n\
             [data]\nkind = \"csv\"\n{data}\n[optimizer]\nkind = \"adam\"\n"
        ),
    )
    .unwrap();
    path
}

/// `data` keys reading the file at `path`.
fn csv_at(path: &Path, rest: &str) -> String {
    format!("path = {:?}\n{rest}", path.display().to_string())
}

/// `batchd trial SPEC --batch-size 8 --steps 2 --json` on the CPU, with
/// its own parsed-data cache under `dir`.
fn trial(dir: &Path, spec: &Path) -> Value {
    let output = quick_trial(spec, &dir.join("cache")).output().unwrap();
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn assert_ok(result: &Value) {
    assert_eq!(
        result["outcome"], "ok",
        "{}\n{}",
        result["reason"], result["stderr_tail"]
    );
}

/// The reason a trial refused its data.
fn refusal(result: &Value) -> String {
    assert_eq!(result["outcome"], "invalid_request", "{result}");
    let reason = result["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("cannot load the data"), "{reason}");
    reason
}

/// `passengers.csv` has quoted fields holding commas (values and a header
/// name) and quoted numbers. Its text columns are one-hot encoded: `class`
/// and `port, country` have 3 levels each, so with `age` and `fare` a
/// sample has 3 + 3 + 1 + 1 = 8 values, which `input_size` checks. The
/// one-hot samples are cached and read back by the next trial.
#[test]
fn a_csv_with_quoted_commas_and_text_columns_trains() {
    let dir = tempfile::tempdir().unwrap();
    let data = csv_at(
        &repo("tests/data/csv/passengers.csv"),
        "label_column = \"survived\"",
    );
    let spec = spec(
        dir.path(),
        "passengers",
        "input_size = 8\nclasses = 2",
        &data,
    );
    let first = trial(dir.path(), &spec);
    assert_ok(&first);
    assert_eq!(first["data_from_cache"], false, "{first}");
    let second = trial(dir.path(), &spec);
    assert_ok(&second);
    assert_eq!(second["data_from_cache"], true, "{second}");
    assert_eq!(
        second["loss_first"], first["loss_first"],
        "the same samples"
    );
    // The width is what the encoding says, not one value per column.
    let wrong = spec_with_input(dir.path(), &data, 4);
    let reason = trial(dir.path(), &wrong)["reason"].to_string();
    assert!(
        reason.contains("model.input_size is 4 but the data has 8 values per sample"),
        "{reason}"
    );
}

fn spec_with_input(dir: &Path, data: &str, input: usize) -> PathBuf {
    spec(
        dir,
        &format!("input{input}"),
        &format!("input_size = {input}\nclasses = 2"),
        data,
    )
}

/// A text label column: its 3 levels are the model's classes; a model of
/// fewer classes is refused with the column and its values.
#[test]
fn a_text_label_column_is_mapped_to_classes() {
    let dir = tempfile::tempdir().unwrap();
    let data = csv_at(
        &repo("tests/data/csv/passengers.csv"),
        "label_column = \"class\"",
    );
    // `port, country` (3), `age`, `fare`, `survived`.
    let fits = spec(dir.path(), "class3", "input_size = 6\nclasses = 3", &data);
    assert_ok(&trial(dir.path(), &fits));
    let few = spec(dir.path(), "class2", "classes = 2", &data);
    let reason = refusal(&trial(dir.path(), &few));
    assert!(
        reason.contains(
            "passengers.csv: label column `class` has 3 distinct text values \
             (`first`, `second`, `third`), more than the model's 2 classes"
        ),
        "{reason}"
    );
}

#[test]
fn a_ragged_csv_fails_naming_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(
        dir.path(),
        "ragged",
        "classes = 2",
        &csv_at(&repo("tests/data/csv/ragged.csv"), ""),
    );
    let reason = refusal(&trial(dir.path(), &spec));
    assert!(
        reason
            .contains("ragged.csv: line 4 (data row 3) has 3 columns, expected 4 as in the header"),
        "{reason}"
    );
}

#[test]
fn a_text_column_of_too_many_levels_fails_naming_it_and_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("ids.csv");
    let mut text = String::from("id,x,label\n");
    for row in 0..50 {
        text.push_str(&format!("user-{row:02},{},{}\n", row % 7, row % 2));
    }
    std::fs::write(&csv, text).unwrap();
    let spec = spec(dir.path(), "ids", "classes = 2", &csv_at(&csv, ""));
    let reason = refusal(&trial(dir.path(), &spec));
    assert!(
        reason.contains(
            "ids.csv: text column `id` has 50 distinct values \
             (`user-00`, `user-01`, `user-02`, `user-03`, `user-04`, …), \
             more than the 32 a text column may have"
        ),
        "{reason}"
    );
}

/// The reader splits on one ASCII byte; `batchd validate` says so.
#[test]
fn a_delimiter_the_reader_cannot_split_on_is_a_spec_error() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("d.csv");
    std::fs::write(&csv, "a;label\n1;0\n2;1\n").unwrap();
    for (delimiter, accepted) in [(";", true), ("tab", true), ("é", false), ("\\\"", false)] {
        let spec = spec(
            dir.path(),
            "delimiter",
            "classes = 2",
            &csv_at(&csv, &format!("delimiter = \"{delimiter}\"")),
        );
        let output = Command::new(env!("CARGO_BIN_EXE_batchd"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("BATCHD_CONFIG", "tests/fixtures/empty-config.toml")
            .arg("validate")
            .arg(&spec)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if accepted {
            assert!(output.status.success(), "{delimiter}: {stderr}");
        } else {
            assert_eq!(output.status.code(), Some(64), "{delimiter}: {stderr}");
            assert!(
                stderr.contains(
                    "data.delimiter: must be an ASCII character other than a quote or a line break"
                ),
                "{delimiter}: {stderr}"
            );
        }
    }
}
