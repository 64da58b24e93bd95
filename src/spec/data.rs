//! The `[data]` section: synthetic, CSV, IDX and text sources, with
//! paths resolved against the spec's folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::kind::section_kind;
use crate::validation::{deserialize_section, Problems};

/// Which CSV column holds the label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LabelColumn {
    Index(usize),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataSource {
    /// Inputs plus labels from a fixed random teacher network.
    Synthetic { seed: u64, samples: u64 },
    Csv {
        path: PathBuf,
        label_column: LabelColumn,
        has_header: bool,
        delimiter: char,
    },
    /// MNIST-format image and label files.
    Idx { images: PathBuf, labels: PathBuf },
    /// A byte-level text corpus.
    Text { path: PathBuf },
}

impl DataSource {
    pub fn kind(&self) -> &'static str {
        match self {
            DataSource::Synthetic { .. } => "synthetic",
            DataSource::Csv { .. } => "csv",
            DataSource::Idx { .. } => "idx",
            DataSource::Text { .. } => "text",
        }
    }

    /// Files the source reads, with the field naming each.
    pub fn files(&self) -> Vec<(&'static str, &Path)> {
        match self {
            DataSource::Synthetic { .. } => Vec::new(),
            DataSource::Csv { path, .. } | DataSource::Text { path } => vec![("data.path", path)],
            DataSource::Idx { images, labels } => {
                vec![
                    ("data.images", images.as_path()),
                    ("data.labels", labels.as_path()),
                ]
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    #[serde(flatten)]
    pub source: DataSource,
    /// Fraction of samples held out for validation loss.
    pub validation_fraction: f64,
}

const DATA_KINDS: &[&str] = &["synthetic", "csv", "idx", "text"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSynthetic {
    #[allow(dead_code)]
    kind: String,
    seed: Option<i64>,
    samples: Option<i64>,
    validation_fraction: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCsv {
    #[allow(dead_code)]
    kind: String,
    path: String,
    label_column: Option<Value>,
    has_header: Option<bool>,
    delimiter: Option<String>,
    validation_fraction: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdx {
    #[allow(dead_code)]
    kind: String,
    images: String,
    labels: String,
    validation_fraction: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawText {
    #[allow(dead_code)]
    kind: String,
    path: String,
    validation_fraction: Option<f64>,
}

fn data_path(field: &str, text: &str, base_dir: Option<&Path>, problems: &mut Problems) -> PathBuf {
    if text.trim().is_empty() {
        problems.push(field, "must not be empty");
        return PathBuf::new();
    }
    let path = PathBuf::from(text);
    if path.is_absolute() {
        return path;
    }
    match base_dir {
        Some(base) => base.join(path),
        None => {
            problems.push(
                field,
                format!("`{text}` is relative, but this spec has no folder to resolve it against; use an absolute path"),
            );
            path
        }
    }
}

pub(super) fn parse_data(
    value: &Value,
    base_dir: Option<&Path>,
    problems: &mut Problems,
) -> Option<DataSpec> {
    let kind = section_kind(value, "data", DATA_KINDS, problems)?;
    let before = problems.len();
    let (source, fraction) = match kind.as_str() {
        "synthetic" => {
            let raw: RawSynthetic = deserialize_section(value, "data", problems)?;
            let seed = problems
                .at_least("data.seed", raw.seed.unwrap_or(0), 0)
                .unwrap_or(0);
            let samples = problems
                .at_least("data.samples", raw.samples.unwrap_or(16_384), 64)
                .unwrap_or(64);
            (
                DataSource::Synthetic { seed, samples },
                raw.validation_fraction,
            )
        }
        "csv" => {
            let raw: RawCsv = deserialize_section(value, "data", problems)?;
            let path = data_path("data.path", &raw.path, base_dir, problems);
            let label_column = match raw.label_column {
                None => LabelColumn::Name("label".into()),
                Some(Value::String(name)) if !name.is_empty() => LabelColumn::Name(name),
                Some(Value::Number(n)) if n.as_u64().is_some() => {
                    LabelColumn::Index(n.as_u64().unwrap_or(0) as usize)
                }
                Some(other) => {
                    problems.push(
                        "data.label_column",
                        format!("must be a column name or a 0-based column index, got {other}"),
                    );
                    LabelColumn::Index(0)
                }
            };
            let has_header = raw.has_header.unwrap_or(true);
            if !has_header && matches!(label_column, LabelColumn::Name(_)) {
                problems.push(
                    "data.label_column",
                    "a file without a header row needs a 0-based column index",
                );
            }
            let delimiter = match raw.delimiter.as_deref() {
                None => ',',
                Some("\\t") | Some("tab") => '\t',
                Some(d) if d.chars().count() == 1 => match d.chars().next().unwrap_or(',') {
                    // The CSV reader splits on one byte; a quote starts a
                    // quoted field, a line break ends a record.
                    c if c.is_ascii() && !matches!(c, '"' | '\n' | '\r') => c,
                    _ => {
                        problems.push(
                            "data.delimiter",
                            format!("must be an ASCII character other than a quote or a line break, got {d:?}"),
                        );
                        ','
                    }
                },
                Some(d) => {
                    problems.push(
                        "data.delimiter",
                        format!("must be a single character, got {d:?}"),
                    );
                    ','
                }
            };
            (
                DataSource::Csv {
                    path,
                    label_column,
                    has_header,
                    delimiter,
                },
                raw.validation_fraction,
            )
        }
        "idx" => {
            let raw: RawIdx = deserialize_section(value, "data", problems)?;
            let images = data_path("data.images", &raw.images, base_dir, problems);
            let labels = data_path("data.labels", &raw.labels, base_dir, problems);
            (DataSource::Idx { images, labels }, raw.validation_fraction)
        }
        _ => {
            let raw: RawText = deserialize_section(value, "data", problems)?;
            let path = data_path("data.path", &raw.path, base_dir, problems);
            (DataSource::Text { path }, raw.validation_fraction)
        }
    };
    let validation_fraction = fraction.unwrap_or(0.1);
    if !(validation_fraction > 0.0 && validation_fraction <= 0.5) {
        problems.push(
            "data.validation_fraction",
            format!("must be in (0, 0.5], got {validation_fraction}"),
        );
    }
    (problems.len() == before).then_some(DataSpec {
        source,
        validation_fraction,
    })
}
