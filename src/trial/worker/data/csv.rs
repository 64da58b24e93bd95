//! Tabular data from a CSV file: numeric features, a label column,
//! standardized columns.

use super::cache::{self, Parsed};
use super::*;

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
            let parsed = parse(path, bytes, label_column, has_header, delimiter, classes)?;
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

/// Parses and standardizes the samples of a CSV file.
fn parse(
    path: &Path,
    bytes: Vec<u8>,
    label_column: &LabelColumn,
    has_header: bool,
    delimiter: char,
    classes: usize,
) -> Result<Parsed, DataError> {
    let text = String::from_utf8(bytes).map_err(|_| format_error(path, "is not UTF-8 text"))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let header: Option<Vec<String>> = if has_header {
        let (_, line) = lines.next().ok_or_else(|| format_error(path, "is empty"))?;
        Some(
            line.split(delimiter)
                .map(|c| c.trim().trim_matches('"').to_string())
                .collect(),
        )
    } else {
        None
    };
    let mut columns = header.as_ref().map(Vec::len);
    let label_index = match (label_column, &header) {
        (LabelColumn::Index(i), _) => *i,
        (LabelColumn::Name(name), Some(header)) => {
            header.iter().position(|c| c == name).ok_or_else(|| {
                format_error(
                    path,
                    format!(
                        "no column named `{name}`; the header has: {}",
                        header.join(", ")
                    ),
                )
            })?
        }
        (LabelColumn::Name(name), None) => {
            return Err(format_error(
                path,
                format!("label column `{name}` needs a header row"),
            ))
        }
    };
    let mut inputs = Vec::new();
    let mut labels = Vec::new();
    for (number, line) in lines {
        let row = number + 1;
        let cells: Vec<&str> = line.split(delimiter).map(str::trim).collect();
        let expected = *columns.get_or_insert(cells.len());
        if cells.len() != expected {
            return Err(format_error(
                path,
                format!(
                    "line {row} has {} columns, expected {expected}",
                    cells.len()
                ),
            ));
        }
        if label_index >= cells.len() {
            return Err(format_error(
                path,
                format!(
                    "label column index {label_index} is past the last column ({})",
                    cells.len() - 1
                ),
            ));
        }
        for (i, cell) in cells.iter().enumerate() {
            let value: f64 = cell.trim_matches('"').parse().map_err(|_| {
                let column = header
                    .as_ref()
                    .map_or_else(|| i.to_string(), |h| format!("`{}`", h[i]));
                format_error(
                    path,
                    format!("line {row}, column {column}: `{cell}` is not a number"),
                )
            })?;
            if i == label_index {
                if value.fract() != 0.0 || value < 0.0 || value >= classes as f64 {
                    return Err(format_error(
                        path,
                        format!("line {row}: label {value} is out of range for {classes} classes (0..{})", classes - 1),
                    ));
                }
                labels.push(value as i32);
            } else {
                inputs.push(value as f32);
            }
        }
    }
    if labels.len() < MIN_SAMPLES {
        return Err(format_error(
            path,
            format!("needs at least {MIN_SAMPLES} data rows"),
        ));
    }
    let sample_len = inputs.len() / labels.len();
    standardize(&mut inputs, sample_len);
    Ok(Parsed {
        sample_len,
        inputs,
        labels,
    })
}

/// Scales each feature column to zero mean and unit variance (constant
/// columns are left at zero).
fn standardize(values: &mut [f32], columns: usize) {
    if columns == 0 {
        return;
    }
    let rows = values.len() / columns;
    for c in 0..columns {
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
