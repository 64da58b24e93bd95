//! Tabular data from a CSV file, read with the `csv` crate: a label column
//! and feature columns, numeric ones standardized and text ones one-hot
//! encoded.
//!
//! Reading follows RFC 4180: a field in double quotes may hold the
//! delimiter, a line break or a quote written twice (`""`). Fields and
//! header names are trimmed of surrounding whitespace, blank lines are
//! skipped and a leading UTF-8 byte-order mark is ignored. Every row has as
//! many fields as the header (or, without one, the first row): a ragged row
//! is an error naming its line.
//!
//! A column is all numbers or all text. A column that mixes them, an empty
//! field, or a value of a numeric column that is not a finite 32-bit float
//! (`NaN`, `inf`, `1e39`) is an error naming the line and the column.
//! - A numeric feature column is scaled to zero mean and unit variance
//!   (a constant one to zero).
//! - A text feature column with at most [`MAX_TEXT_LEVELS`] distinct values
//!   (its levels) becomes one 0/1 input per level, in the column's place,
//!   the levels in the byte order of their text. A column with more is
//!   refused with its name, a few of its values and their count.
//! - A numeric label is an integer in `0..classes`; a text label's levels,
//!   in byte order, are the classes `0, 1, ...`, at most `classes` of them.

use std::collections::HashMap;
use std::fmt;

use super::cache::{self, Parsed};
use super::MAX_TEXT_LEVELS;
use super::*;

/// Values of a column that an error shows.
const SHOWN_VALUES: usize = 5;
/// Characters of a value that an error shows.
const SHOWN_CHARS: usize = 40;

/// A column in an error: by its header name, or by its 0-based index in a
/// file without a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    Named(String),
    Index(usize),
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Column::Named(name) => write!(f, "`{}`", shown(name)),
            Column::Index(index) => write!(f, "{index}"),
        }
    }
}

/// Why a CSV cannot be used; displayed after the file's path. Lines are
/// the file's (1-based, where a record starts).
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("the delimiter {0:?} is not one ASCII character other than a quote or a line break")]
    Delimiter(char),
    #[error("is not UTF-8 text (line {line})")]
    NotUtf8 { line: usize },
    #[error("is empty")]
    Empty,
    #[error("cannot be read as CSV: {0}")]
    Read(#[from] ::csv::Error),
    #[error(
        "line {line} (data row {row}) has {found} columns, expected {expected} as {reference}"
    )]
    Ragged {
        line: u64,
        row: usize,
        found: usize,
        expected: usize,
        /// Where the expected count comes from: `in the header`, `on line 2`.
        reference: String,
    },
    #[error("no column named `{name}`; the header has: {header}")]
    NoColumn { name: String, header: String },
    #[error("label column `{0}` needs a header row")]
    NeedsHeader(String),
    #[error("label column index {index} is past the last column ({last})")]
    LabelIndex { index: usize, last: usize },
    #[error("line {line}, column {column} is empty; fill in or drop the missing values")]
    EmptyField { line: u64, column: Column },
    #[error("line {line}, column {column}: `{}` is not a finite 32-bit float", shown(.value))]
    NotFinite {
        line: u64,
        column: Column,
        value: String,
    },
    #[error(
        "line {line}, column {column}: `{}` is {is}, but the column's earlier values are {earlier_are} (`{}` on line {earlier_line}); a column is either all numbers or all text",
        shown(.value),
        shown(.earlier)
    )]
    Mixed {
        line: u64,
        column: Column,
        value: String,
        /// `a number` or `not a number`.
        is: &'static str,
        /// `text` or `numbers`.
        earlier_are: &'static str,
        earlier: String,
        earlier_line: u64,
    },
    #[error("line {line}: label {value} is out of range for {classes} classes (0..{})", classes - 1)]
    LabelRange {
        line: u64,
        value: f64,
        classes: usize,
    },
    #[error(
        "text column {column} has {} distinct values ({}), more than the {MAX_TEXT_LEVELS} a text column may have (each becomes one input); drop the column or encode it as numbers",
        counted(*.count, MAX_TEXT_LEVELS),
        listed(.values, *.count)
    )]
    TooManyLevels {
        column: Column,
        /// Distinct values, counted up to [`LEVELS_COUNTED`] past the limit.
        count: usize,
        /// The first few levels in byte order.
        values: Vec<String>,
    },
    #[error(
        "label column {column} has {} distinct text values ({}), more than the model's {classes} classes",
        counted(*.count, *.classes),
        listed(.values, *.count)
    )]
    TooManyClasses {
        column: Column,
        count: usize,
        values: Vec<String>,
        classes: usize,
    },
    #[error("needs at least {MIN_SAMPLES} data rows")]
    TooFewRows,
    #[error(
        "{rows} rows of {per_sample} values each are {}, more than the {} a CSV may decode to (one-hot text columns count once per level)",
        crate::units::ByteSize((*.rows as u64).saturating_mul(*.per_sample as u64).saturating_mul(4)),
        crate::units::ByteSize(MAX_DECODED_BYTES)
    )]
    TooLarge { rows: usize, per_sample: usize },
}

/// A value as an error shows it: control characters escaped, long ones cut.
fn shown(value: &str) -> String {
    let escaped: String = value.escape_debug().collect();
    match escaped.char_indices().nth(SHOWN_CHARS) {
        Some((at, _)) => format!("{}…", &escaped[..at]),
        None => escaped,
    }
}

/// `values` (of `count`) as an error lists them.
/// The most a CSV may decode to (4-byte values): one-hot text columns can
/// make the samples many times the file (a 2-byte field, 32 values), and
/// the parsed data is also written to the data cache.
const MAX_DECODED_BYTES: u64 = 8 << 30;

/// Refuses a decoded size over `limit` bytes before it is allocated.
fn check_decoded_size(rows: usize, per_sample: usize, limit: u64) -> Result<(), CsvError> {
    let bytes = (rows as u64)
        .checked_mul(per_sample as u64)
        .and_then(|values| values.checked_mul(4));
    match bytes {
        Some(bytes) if bytes <= limit => Ok(()),
        _ => Err(CsvError::TooLarge { rows, per_sample }),
    }
}

/// Distinct values a column is counted to past its limit before reading
/// stops: a column of IDs in a huge file is refused at once, without
/// keeping every value it holds.
const LEVELS_COUNTED: usize = 1024;

/// A refused column's count of distinct values, as far as it was counted.
fn counted(count: usize, limit: usize) -> String {
    if count > limit + LEVELS_COUNTED {
        format!("more than {}", limit + LEVELS_COUNTED)
    } else {
        count.to_string()
    }
}

fn listed(values: &[String], count: usize) -> String {
    let mut list: Vec<String> = values.iter().map(|v| format!("`{}`", shown(v))).collect();
    if count > values.len() {
        list.push("…".into());
    }
    list.join(", ")
}

/// Where a CSV's samples came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// The cache entry an earlier trial stored.
    Cache,
    /// The file, parsed now; `refused` says why a cache entry was not used.
    Parsed { refused: Option<String> },
}

impl Source {
    pub(super) fn is_cached(&self) -> bool {
        *self == Source::Cache
    }
}

/// Loads a CSV, from `cache` (a folder) when an earlier trial parsed the
/// same bytes with the same settings; the [`Source`] says which.
pub(super) fn csv_file(
    path: &Path,
    label_column: &LabelColumn,
    has_header: bool,
    delimiter: char,
    classes: usize,
    fraction: f64,
    cache: Option<&Path>,
) -> Result<(ClassificationData, Source), DataError> {
    let settings = format!(
        "csv label={label_column:?} header={has_header} delimiter={delimiter:?} classes={classes}"
    );
    let mut refused = None;
    let cached = cache.and_then(|dir| {
        // An unreadable CSV is reported by the parse below.
        let entry = cache::entry_for_file(dir, path, &settings).ok()?;
        match cache::load(&entry, classes) {
            Ok(found) => found,
            Err(error) => {
                // Reported (in the trial's warnings) and removed, then
                // replaced by the parse below.
                refused = Some(format!(
                    "the cached samples of {} in {} were not used and are parsed again: {error}",
                    path.display(),
                    entry.path.display()
                ));
                cache::discard(&entry);
                None
            }
        }
    });
    let (parsed, from_cache) = match cached {
        Some(parsed) => (parsed, Source::Cache),
        None => {
            let bytes = read(path)?;
            // Named by the bytes parsed, in case the file changed since.
            let entry = cache.map(|dir| cache::entry(dir, &bytes, &settings));
            let parsed =
                parse(bytes, label_column, has_header, delimiter, classes).map_err(|source| {
                    DataError::Csv {
                        path: path.to_path_buf(),
                        source: Box::new(source),
                    }
                })?;
            if let Some(entry) = &entry {
                if let Err(error) = cache::store(entry, &parsed) {
                    eprintln!(
                        "batchd: cannot cache the parsed {}: {error}",
                        path.display()
                    );
                }
            }
            (parsed, Source::Parsed { refused })
        }
    };
    let rows = parsed.labels.len();
    let (train, valid) = split_indices(rows, fraction, rows as u64);
    Ok((
        ClassificationData {
            sample_len: parsed.sample_len,
            image_shape: None,
            inputs: parsed.inputs,
            labels: parsed.labels,
            train,
            valid,
        },
        from_cache,
    ))
}

/// What one column has held so far, while the rows are read.
#[derive(Debug, Default)]
struct Seen {
    /// Each distinct text value, with a code in the order first seen.
    levels: HashMap<String, u32>,
    first_text: Option<(u64, String)>,
    first_number: Option<(u64, String)>,
}

impl Seen {
    /// Notes a number on `line`: an error (naming the `column`) if the
    /// column held text.
    fn number(
        &mut self,
        line: u64,
        value: &str,
        column: impl FnOnce() -> Column,
    ) -> Result<(), CsvError> {
        if let Some((earlier_line, earlier)) = &self.first_text {
            return Err(if not_finite(earlier) {
                CsvError::NotFinite {
                    line: *earlier_line,
                    column: column(),
                    value: earlier.clone(),
                }
            } else {
                CsvError::Mixed {
                    line,
                    column: column(),
                    value: value.to_owned(),
                    is: "a number",
                    earlier_are: "text",
                    earlier: earlier.clone(),
                    earlier_line: *earlier_line,
                }
            });
        }
        self.first_number
            .get_or_insert_with(|| (line, value.to_owned()));
        Ok(())
    }

    /// Notes text on `line` and gives its level's code: an error (naming
    /// the `column`) if the column held numbers.
    fn text(
        &mut self,
        line: u64,
        value: &str,
        column: impl FnOnce() -> Column,
    ) -> Result<u32, CsvError> {
        if let Some((earlier_line, earlier)) = &self.first_number {
            return Err(if not_finite(value) {
                CsvError::NotFinite {
                    line,
                    column: column(),
                    value: value.to_owned(),
                }
            } else {
                CsvError::Mixed {
                    line,
                    column: column(),
                    value: value.to_owned(),
                    is: "not a number",
                    earlier_are: "numbers",
                    earlier: earlier.clone(),
                    earlier_line: *earlier_line,
                }
            });
        }
        self.first_text
            .get_or_insert_with(|| (line, value.to_owned()));
        if let Some(&code) = self.levels.get(value) {
            return Ok(code);
        }
        let code = self.levels.len() as u32;
        self.levels.insert(value.to_owned(), code);
        Ok(code)
    }

    /// The levels in byte order, and each code's place among them.
    fn sorted_levels(&self) -> (Vec<&str>, Vec<u32>) {
        let mut levels: Vec<(&str, u32)> = self
            .levels
            .iter()
            .map(|(level, &code)| (level.as_str(), code))
            .collect();
        levels.sort_unstable();
        let mut rank = vec![0; levels.len()];
        for (place, &(_, code)) in levels.iter().enumerate() {
            rank[code as usize] = place as u32;
        }
        (levels.into_iter().map(|(level, _)| level).collect(), rank)
    }

    /// The first few levels in byte order, for an error.
    fn some_levels(&self) -> Vec<String> {
        let (levels, _) = self.sorted_levels();
        levels
            .into_iter()
            .take(SHOWN_VALUES)
            .map(str::to_owned)
            .collect()
    }
}

/// Whether `value`, which is not a finite 32-bit float, reads as a number
/// (`NaN`, `inf`, or one too large).
fn not_finite(value: &str) -> bool {
    value.parse::<f64>().is_ok()
}

/// The line a record starts on. The reader's position is where it began
/// to read the record, before the blank lines it skipped.
fn first_line(text: &[u8], at: &::csv::Position) -> u64 {
    let skipped = text
        .get(at.byte() as usize..)
        .unwrap_or_default()
        .iter()
        .take_while(|&&b| b == b'\n' || b == b'\r')
        .filter(|&&b| b == b'\n')
        .count();
    at.line() + skipped as u64
}

/// How a feature column becomes inputs.
enum Encoding {
    /// One input: the value, standardized.
    Number,
    /// One 0/1 input per level; `rank` maps a level's code to its input.
    OneHot { levels: usize, rank: Vec<u32> },
}

impl Encoding {
    fn width(&self) -> usize {
        match self {
            Encoding::Number => 1,
            Encoding::OneHot { levels, .. } => *levels,
        }
    }
}

/// Parses, encodes and standardizes the samples of a CSV file's bytes
/// (freed once read, before the samples are built).
fn parse(
    bytes: Vec<u8>,
    label_column: &LabelColumn,
    has_header: bool,
    delimiter: char,
    classes: usize,
) -> Result<Parsed, CsvError> {
    let delimiter_byte = u8::try_from(delimiter)
        .ok()
        .filter(|d| d.is_ascii() && !matches!(d, b'"' | b'\n' | b'\r'))
        .ok_or(CsvError::Delimiter(delimiter))?;
    let text = std::str::from_utf8(&bytes).map_err(|error| CsvError::NotUtf8 {
        line: 1 + bytes[..error.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = ::csv::ReaderBuilder::new()
        .delimiter(delimiter_byte)
        .has_headers(false)
        // Ragged rows are refused below, with the line and both counts.
        .flexible(true)
        .trim(::csv::Trim::All)
        .from_reader(text.as_bytes())
        .into_records()
        // A blank line, or one of only spaces.
        .filter(|record| {
            !record
                .as_ref()
                .is_ok_and(|r| r.len() == 1 && r[0].is_empty())
        });
    let header: Option<Vec<String>> = if has_header {
        let names = records.next().ok_or(CsvError::Empty)??;
        Some(names.iter().map(str::to_owned).collect())
    } else {
        None
    };
    let label_index = match (label_column, &header) {
        (LabelColumn::Index(i), _) => *i,
        (LabelColumn::Name(name), Some(header)) => header
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| CsvError::NoColumn {
                name: name.clone(),
                header: listed(
                    &header.iter().take(8).cloned().collect::<Vec<_>>(),
                    header.len(),
                ),
            })?,
        (LabelColumn::Name(name), None) => return Err(CsvError::NeedsHeader(name.clone())),
    };
    let column_of = |i: usize| match &header {
        Some(header) => Column::Named(header[i].clone()),
        None => Column::Index(i),
    };
    // The column count and where it comes from, once known.
    let mut shape = header
        .as_ref()
        .map(|h| (h.len(), "in the header".to_string()));
    let mut features: Vec<Seen> = Vec::new();
    let mut label = Seen::default();
    // Row-major, the label's column left out: a number's f32 bits, or a
    // text level's code.
    let mut cells: Vec<u32> = Vec::new();
    // A numeric label, or a text label's code.
    let mut labels: Vec<u32> = Vec::new();
    for (row, record) in (1..).zip(records) {
        let record = record?;
        let line = record
            .position()
            .map_or(0, |at| first_line(text.as_bytes(), at));
        let (expected, reference) =
            shape.get_or_insert_with(|| (record.len(), format!("on line {line}")));
        if record.len() != *expected {
            return Err(CsvError::Ragged {
                line,
                row,
                found: record.len(),
                expected: *expected,
                reference: reference.clone(),
            });
        }
        if row == 1 {
            if label_index >= record.len() {
                return Err(CsvError::LabelIndex {
                    index: label_index,
                    last: record.len() - 1,
                });
            }
            features.resize_with(record.len() - 1, Seen::default);
        }
        for (i, value) in record.iter().enumerate() {
            if value.is_empty() {
                return Err(CsvError::EmptyField {
                    line,
                    column: column_of(i),
                });
            }
            if i == label_index {
                let code = match value.parse::<f64>() {
                    Ok(number) if number.is_finite() => {
                        label.number(line, value, || column_of(i))?;
                        if number.fract() != 0.0 || number < 0.0 || number >= classes as f64 {
                            return Err(CsvError::LabelRange {
                                line,
                                value: number,
                                classes,
                            });
                        }
                        number as u32
                    }
                    _ => {
                        let code = label.text(line, value, || column_of(i))?;
                        if label.levels.len() > classes + LEVELS_COUNTED {
                            return Err(CsvError::TooManyClasses {
                                column: column_of(label_index),
                                count: label.levels.len(),
                                values: label.some_levels(),
                                classes,
                            });
                        }
                        code
                    }
                };
                labels.push(code);
                continue;
            }
            let seen = &mut features[i - usize::from(i > label_index)];
            let word = match value.parse::<f32>() {
                Ok(number) if number.is_finite() => {
                    seen.number(line, value, || column_of(i))?;
                    number.to_bits()
                }
                _ => {
                    let code = seen.text(line, value, || column_of(i))?;
                    if seen.levels.len() > MAX_TEXT_LEVELS + LEVELS_COUNTED {
                        return Err(CsvError::TooManyLevels {
                            column: column_of(i),
                            count: seen.levels.len(),
                            values: seen.some_levels(),
                        });
                    }
                    code
                }
            };
            cells.push(word);
        }
    }
    drop(bytes);
    let rows = labels.len();
    if rows < MIN_SAMPLES {
        return Err(CsvError::TooFewRows);
    }
    let feature_column = |f: usize| column_of(f + usize::from(f >= label_index));
    let mut encodings = Vec::with_capacity(features.len());
    for (f, seen) in features.iter().enumerate() {
        encodings.push(match seen.levels.len() {
            0 => Encoding::Number,
            count if count > MAX_TEXT_LEVELS => {
                return Err(CsvError::TooManyLevels {
                    column: feature_column(f),
                    count,
                    values: seen.some_levels(),
                })
            }
            count => Encoding::OneHot {
                levels: count,
                rank: seen.sorted_levels().1,
            },
        });
    }
    let labels: Vec<i32> = match label.levels.len() {
        0 => labels.into_iter().map(|l| l as i32).collect(),
        count if count > classes => {
            return Err(CsvError::TooManyClasses {
                column: column_of(label_index),
                count,
                values: label.some_levels(),
                classes,
            })
        }
        _ => {
            let (_, rank) = label.sorted_levels();
            labels
                .into_iter()
                .map(|c| rank[c as usize] as i32)
                .collect()
        }
    };
    let sample_len: usize = encodings.iter().map(Encoding::width).sum();
    check_decoded_size(rows, sample_len, MAX_DECODED_BYTES)?;
    let mut inputs = vec![0f32; rows * sample_len];
    if !encodings.is_empty() {
        for (sample, words) in inputs
            .chunks_exact_mut(sample_len.max(1))
            .zip(cells.chunks_exact(encodings.len()))
        {
            let mut at = 0;
            for (encoding, &word) in encodings.iter().zip(words) {
                match encoding {
                    Encoding::Number => sample[at] = f32::from_bits(word),
                    Encoding::OneHot { rank, .. } => {
                        sample[at + rank[word as usize] as usize] = 1.0
                    }
                }
                at += encoding.width();
            }
        }
    }
    drop(cells);
    let numeric: Vec<bool> = encodings
        .iter()
        .flat_map(|e| match e {
            Encoding::Number => vec![true],
            Encoding::OneHot { levels, .. } => vec![false; *levels],
        })
        .collect();
    standardize(&mut inputs, &numeric);
    Ok(Parsed {
        sample_len,
        inputs,
        labels,
    })
}

/// Scales each feature column marked in `which` (one flag per column) to
/// zero mean and unit variance (a constant column to zero).
fn standardize(values: &mut [f32], which: &[bool]) {
    let columns = which.len();
    if columns == 0 {
        return;
    }
    let rows = values.len() / columns;
    for c in (0..columns).filter(|&c| which[c]) {
        let column = (0..rows).map(|r| f64::from(values[r * columns + c]));
        let mean = column.clone().sum::<f64>() / rows as f64;
        let var = column.map(|v| (v - mean).powi(2)).sum::<f64>() / rows as f64;
        let std = var.sqrt();
        for r in 0..rows {
            let v = &mut values[r * columns + c];
            *v = if std > 1e-12 {
                ((f64::from(*v) - mean) / std) as f32
            } else {
                0.0
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str, label: &str, classes: usize) -> Result<Parsed, CsvError> {
        parse(
            text.as_bytes().to_vec(),
            &LabelColumn::Name(label.into()),
            true,
            ',',
            classes,
        )
    }

    fn refusal(text: &str, label: &str, classes: usize) -> String {
        parse_text(text, label, classes)
            .expect_err("the CSV must be refused")
            .to_string()
    }

    fn assert_close(actual: &[f32], expected: &[f32]) {
        assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
        for (a, e) in actual.iter().zip(expected) {
            assert!((a - e).abs() < 1e-5, "{actual:?} vs {expected:?}");
        }
    }

    #[test]
    fn quoted_fields_hold_the_delimiter_escaped_quotes_and_line_breaks() {
        let text = "name,\"x, y\",label\n\
                    \"Smith, J\",1.5,0\n\
                    \"say \"\"hi\"\"\",2.5,1\n\
                    \"two\nlines\",3.5,0\n";
        let parsed = parse_text(text, "label", 2).unwrap();
        // `name`: three levels in byte order (`Smith, J`, `say "hi"`,
        // `two\nlines`); `x, y`: 1.5, 2.5, 3.5 standardized.
        let z = 1.5f32.sqrt();
        assert_eq!(parsed.sample_len, 4);
        assert_close(
            &parsed.inputs,
            &[
                1.0, 0.0, 0.0, -z, //
                0.0, 1.0, 0.0, 0.0, //
                0.0, 0.0, 1.0, z,
            ],
        );
        assert_eq!(parsed.labels, vec![0, 1, 0]);
        // A quoted header name with the delimiter names its column.
        let parsed = parse_text("\"a, b\",label\n\"1\",0\n\"2\",0\n\"3\",0\n", "a, b", 4).unwrap();
        assert_eq!(parsed.labels, vec![1, 2, 3]);
        assert_close(&parsed.inputs, &[0.0, 0.0, 0.0]);
    }

    #[test]
    fn text_columns_are_one_hot_in_byte_order_beside_standardized_numbers() {
        let text = "color,label,size\nred,0,1\nblue,1,2\ngreen,0,3\nblue,1,4\n";
        let parsed = parse_text(text, "label", 2).unwrap();
        // blue, green, red; then size (1..4 standardized: mean 2.5, std √1.25).
        let s = |v: f32| (v - 2.5) / 1.25f32.sqrt();
        assert_eq!(parsed.sample_len, 4);
        assert_close(
            &parsed.inputs,
            &[
                0.0,
                0.0,
                1.0,
                s(1.0), //
                1.0,
                0.0,
                0.0,
                s(2.0), //
                0.0,
                1.0,
                0.0,
                s(3.0), //
                1.0,
                0.0,
                0.0,
                s(4.0),
            ],
        );
        assert_eq!(parsed.labels, vec![0, 1, 0, 1]);
        // The order does not depend on the rows' order.
        let shuffled = "color,label,size\ngreen,0,3\nblue,1,4\nred,0,1\nblue,1,2\n";
        let again = parse_text(shuffled, "label", 2).unwrap();
        assert_eq!(&again.inputs[..3], &[0.0, 1.0, 0.0]);
        assert_eq!(&again.inputs[8..11], &[0.0, 0.0, 1.0]);
        // A value that reads as a number in a text column is one more level.
        let parsed = parse_text("name,label\nNan,0\nBob,1\nInf,1\n", "label", 2).unwrap();
        assert_eq!(parsed.inputs, [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    }

    /// A CSV with a text column `city` of `levels` distinct values.
    fn cities(levels: usize) -> String {
        let mut text = String::from("city,label\n");
        for i in 0..levels.max(2) {
            text.push_str(&format!("c{:02},{}\n", i % levels, i % 2));
        }
        text
    }

    #[test]
    fn a_text_column_of_too_many_levels_is_refused_naming_it_and_its_values() {
        let parsed = parse_text(&cities(MAX_TEXT_LEVELS), "label", 2).unwrap();
        assert_eq!(parsed.sample_len, MAX_TEXT_LEVELS);
        let error = refusal(&cities(MAX_TEXT_LEVELS + 1), "label", 2);
        assert_eq!(
            error,
            "text column `city` has 33 distinct values (`c00`, `c01`, `c02`, `c03`, `c04`, …), \
             more than the 32 a text column may have (each becomes one input); \
             drop the column or encode it as numbers"
        );
        // Without a header the column is named by its index.
        let text = cities(40).replacen("city,label\n", "", 1);
        let error = parse(
            text.as_bytes().to_vec(),
            &LabelColumn::Index(1),
            false,
            ',',
            2,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("text column 0 has 40 distinct values"),
            "{error}"
        );
        // A column of IDs is refused once it is past counting, not after
        // every value of the file is kept.
        let error = refusal(&cities(5000), "label", 2);
        assert!(
            error.starts_with(&format!(
                "text column `city` has more than {} distinct values",
                MAX_TEXT_LEVELS + LEVELS_COUNTED
            )),
            "{error}"
        );
    }

    #[test]
    fn a_csv_that_would_decode_past_the_limit_is_refused_before_allocating() {
        assert!(check_decoded_size(1000, 32, 128_000).is_ok());
        let error = check_decoded_size(1000, 33, 128_000).unwrap_err();
        assert!(matches!(
            error,
            CsvError::TooLarge {
                rows: 1000,
                per_sample: 33
            }
        ));
        assert!(
            error
                .to_string()
                .starts_with("1000 rows of 33 values each are"),
            "{error}"
        );
        // No overflow on absurd shapes.
        assert!(check_decoded_size(usize::MAX, usize::MAX, u64::MAX).is_err());
        assert!(check_decoded_size(1 << 20, 2048, MAX_DECODED_BYTES).is_ok());
        assert!(check_decoded_size(1 << 20, 2049, MAX_DECODED_BYTES).is_err());
    }

    #[test]
    fn a_missing_label_column_names_a_few_of_the_header_s_columns() {
        let header: Vec<String> = (0..10_000).map(|i| format!("f{i}")).collect();
        let text = format!("{}\n{}\n", header.join(","), vec!["1"; 10_000].join(","));
        let error = refusal(&text, "label", 2);
        assert!(
            error.starts_with("no column named `label`; the header has: `f0`, `f1`"),
            "{error}"
        );
        assert!(error.ends_with("`f7`, …"), "{error}");
    }

    #[test]
    fn ragged_rows_are_refused_naming_the_line_and_both_counts() {
        let error = refusal("a,b,label\n1,2,0\n3,4\n5,6,1\n", "label", 2);
        assert_eq!(
            error,
            "line 3 (data row 2) has 2 columns, expected 3 as in the header"
        );
        // Lines count the file's lines: a quoted line break is one.
        let error = refusal("a,b,label\n\"x\ny\",2,0\nz,4,1\n5,6,1,7\n", "label", 2);
        assert_eq!(
            error,
            "line 5 (data row 3) has 4 columns, expected 3 as in the header"
        );
        let error = parse(
            b"\r\n1,2,0\r\n\r\n\n3,4,1,5\r\n".to_vec(),
            &LabelColumn::Index(2),
            false,
            ',',
            2,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            error,
            "line 5 (data row 2) has 4 columns, expected 3 as on line 2"
        );
    }

    #[test]
    fn text_labels_are_classes_in_byte_order_up_to_the_models_count() {
        let text = "x,species\n1,virginica\n2,setosa\n3,versicolor\n4,setosa\n";
        let parsed = parse_text(text, "species", 3).unwrap();
        assert_eq!(parsed.labels, vec![2, 0, 1, 0]);
        assert_eq!(parsed.sample_len, 1);
        // Fewer levels than classes is fine, as with numeric labels.
        assert_eq!(parse_text(text, "species", 5).unwrap().labels, [2, 0, 1, 0]);
        assert_eq!(
            refusal(text, "species", 2),
            "label column `species` has 3 distinct text values \
             (`setosa`, `versicolor`, `virginica`), more than the model's 2 classes"
        );
    }

    #[test]
    fn mixed_columns_empty_fields_and_values_that_are_not_finite_are_refused() {
        let cases = [
            (
                "a,b,label\n1,2,0\n3,x,1\n",
                "line 3, column `b`: `x` is not a number, but the column's earlier values \
                 are numbers (`2` on line 2); a column is either all numbers or all text",
            ),
            (
                "a,b,label\nx,2,0\n3,4,1\n",
                "line 3, column `a`: `3` is a number, but the column's earlier values \
                 are text (`x` on line 2); a column is either all numbers or all text",
            ),
            (
                "a,b,label\n1,2,0\n3,NaN,1\n",
                "line 3, column `b`: `NaN` is not a finite 32-bit float",
            ),
            (
                "a,b,label\n1,inf,0\n3,4,1\n",
                "line 2, column `b`: `inf` is not a finite 32-bit float",
            ),
            (
                "a,b,label\n1,2,0\n3,1e39,1\n",
                "line 3, column `b`: `1e39` is not a finite 32-bit float",
            ),
            (
                "a,b,label\n1,2,0\n3,,1\n",
                "line 3, column `b` is empty; fill in or drop the missing values",
            ),
            (
                "a,b,label\n1,2,0\n3,\" \",1\n",
                "line 3, column `b` is empty; fill in or drop the missing values",
            ),
            (
                "a,b,label\n1,2,0\n3,4,cat\n",
                "line 3, column `label`: `cat` is not a number, but the column's earlier \
                 values are numbers (`0` on line 2); a column is either all numbers or all text",
            ),
            (
                "a,b,label\n1,2,0\n3,4,1.5\n",
                "line 3: label 1.5 is out of range for 2 classes (0..1)",
            ),
            ("a,b,label\n1,2,0\n", "needs at least 2 data rows"),
            ("\n\n", "is empty"),
        ];
        for (text, expected) in cases {
            assert_eq!(refusal(text, "label", 2), expected, "{text:?}");
        }
        let error = parse(
            b"a;b\n\xff;1\n".to_vec(),
            &LabelColumn::Index(1),
            true,
            ';',
            2,
        )
        .unwrap_err();
        assert_eq!(error.to_string(), "is not UTF-8 text (line 2)");
    }

    #[test]
    fn a_byte_order_mark_blank_lines_spaces_and_other_delimiters_are_read() {
        let text = "\u{feff}a ; \" b \";label\n\n 1 ; 2 ;0\n   \n3;4;1\n";
        let parsed = parse(
            text.as_bytes().to_vec(),
            &LabelColumn::Name("label".into()),
            true,
            ';',
            2,
        )
        .unwrap();
        assert_eq!(parsed.labels, [0, 1]);
        assert_eq!(parsed.inputs, [-1.0, -1.0, 1.0, 1.0]);
        let parsed = parse(
            b"1\t2\t0\n3\t4\t1\n".to_vec(),
            &LabelColumn::Index(2),
            false,
            '\t',
            2,
        )
        .unwrap();
        assert_eq!(parsed.labels, [0, 1]);
        let error = parse(
            b"1,0\n2,1\n".to_vec(),
            &LabelColumn::Index(1),
            false,
            'é',
            2,
        )
        .unwrap_err();
        assert!(matches!(error, CsvError::Delimiter('é')), "{error}");
    }

    #[test]
    fn the_spec_documents_the_limit_on_levels() {
        let spec = include_str!("../../../../docs/spec.md");
        assert!(
            spec.contains(&format!("at most **{MAX_TEXT_LEVELS}** levels")),
            "docs/spec.md must give the limit on a text column's levels"
        );
    }

    #[test]
    fn one_hot_samples_are_cached_and_read_back() {
        // 32 one-character levels, no header: the fewest bytes per value a
        // cache entry can stand for.
        let levels: Vec<char> = ('A'..='Z').chain('a'..='f').collect();
        assert_eq!(levels.len(), MAX_TEXT_LEVELS);
        let text: Vec<String> = (0..64)
            .map(|i| format!("{},{}", levels[i % levels.len()], i % 2))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        std::fs::write(&path, text.join("\n")).unwrap();
        let cache = dir.path().join("cache");
        let load = || {
            csv_file(
                &path,
                &LabelColumn::Index(1),
                false,
                ',',
                2,
                0.25,
                Some(&cache),
            )
            .unwrap()
        };
        let (parsed, source) = load();
        assert_eq!(source, Source::Parsed { refused: None });
        assert_eq!(parsed.sample_len, MAX_TEXT_LEVELS);
        let (cached, source) = load();
        assert_eq!(source, Source::Cache);
        assert_eq!(cached.inputs, parsed.inputs);
        assert_eq!(cached.labels, parsed.labels);
    }
}
