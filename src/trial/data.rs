//! Data sources for trials, loaded once into memory with a held-out split.
//!
//! Nothing here depends on Burn: batches come out as flat vectors that the
//! engine turns into tensors. Batches are drawn with replacement from a
//! seeded generator, so any batch size can be tried (a max-fit search probes
//! batches larger than small datasets) and runs are reproducible.

use std::path::{Path, PathBuf};

use crate::spec::{DataSource, DataSpec, LabelColumn, ModelSpec};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{0}")]
    Shape(String),
}

fn format_error(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A small, fast, seedable generator (SplitMix64): deterministic across
/// platforms, which `rand`'s default generators do not promise.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * n as f64) as usize % n.max(1)
    }

    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Labelled fixed-size samples (MLP and CNN inputs).
#[derive(Debug, Clone)]
pub struct ClassificationData {
    /// Values per sample (features, or channels x height x width).
    pub sample_len: usize,
    /// `[channels, height, width]` when the samples are images.
    pub image_shape: Option<[usize; 3]>,
    pub classes: usize,
    pub inputs: Vec<f32>,
    pub labels: Vec<i32>,
    pub train: Vec<u32>,
    pub valid: Vec<u32>,
}

/// A token stream read in windows (transformer inputs).
#[derive(Debug, Clone)]
pub struct SequenceData {
    pub vocab_size: usize,
    pub context_length: usize,
    pub tokens: Vec<u16>,
    /// `tokens[..split]` is training data, `tokens[split..]` validation.
    pub split: usize,
}

#[derive(Debug, Clone)]
pub enum Dataset {
    Classification(ClassificationData),
    Sequences(SequenceData),
}

/// One batch, flattened.
#[derive(Debug, Clone)]
pub enum Batch {
    /// `inputs` is `n x sample_len`, `labels` is `n`.
    Classification { inputs: Vec<f32>, labels: Vec<i32> },
    /// `n x (context_length + 1)` tokens: inputs are the first
    /// `context_length`, targets the last `context_length`.
    Sequences { tokens: Vec<i32> },
}

impl Dataset {
    /// Loads (or generates) the spec's data for its model.
    pub fn load(data: &DataSpec, model: &ModelSpec) -> Result<Dataset, DataError> {
        let fraction = data.validation_fraction;
        match (&data.source, model) {
            (DataSource::Synthetic { seed, samples }, ModelSpec::Transformer(t)) => {
                Ok(Dataset::Sequences(markov_sequences(
                    *seed,
                    *samples as usize,
                    t.vocab_size,
                    t.context_length,
                    fraction,
                )))
            }
            (DataSource::Synthetic { seed, samples }, _) => Ok(Dataset::Classification(
                teacher_samples(*seed, *samples as usize, model, fraction)?,
            )),
            (DataSource::Text { path }, ModelSpec::Transformer(t)) => Ok(Dataset::Sequences(
                text_corpus(path, t.context_length, t.vocab_size, fraction)?,
            )),
            (
                DataSource::Csv {
                    path,
                    label_column,
                    has_header,
                    delimiter,
                },
                _,
            ) => {
                let data = csv_file(
                    path,
                    label_column,
                    *has_header,
                    *delimiter,
                    classes_of(model),
                    fraction,
                )?;
                Ok(Dataset::Classification(fit_to_model(data, model)?))
            }
            (DataSource::Idx { images, labels }, _) => {
                let data = idx_files(images, labels, classes_of(model), fraction)?;
                Ok(Dataset::Classification(fit_to_model(data, model)?))
            }
            (source, model) => Err(DataError::Shape(format!(
                "a {} model cannot train on {} data",
                model.kind(),
                source.kind()
            ))),
        }
    }

    /// Samples in the training split; for sequences, the number of
    /// non-overlapping windows (what an epoch over the corpus holds).
    pub fn train_len(&self) -> usize {
        match self {
            Dataset::Classification(d) => d.train.len(),
            Dataset::Sequences(d) => (d.split / (d.context_length + 1)).max(1),
        }
    }

    /// A batch of `n` training samples drawn with replacement.
    pub fn train_batch(&self, n: usize, rng: &mut SplitMix64) -> Batch {
        match self {
            Dataset::Classification(d) => d.batch(&d.train, n, rng),
            Dataset::Sequences(d) => d.batch(0, d.split, n, rng),
        }
    }

    /// A batch of `n` validation samples drawn with replacement.
    pub fn valid_batch(&self, n: usize, rng: &mut SplitMix64) -> Batch {
        match self {
            Dataset::Classification(d) => d.batch(&d.valid, n, rng),
            Dataset::Sequences(d) => d.batch(d.split, d.tokens.len(), n, rng),
        }
    }
}

impl ClassificationData {
    fn batch(&self, pool: &[u32], n: usize, rng: &mut SplitMix64) -> Batch {
        let mut inputs = Vec::with_capacity(n * self.sample_len);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let index = pool[rng.below(pool.len())] as usize;
            inputs.extend_from_slice(
                &self.inputs[index * self.sample_len..(index + 1) * self.sample_len],
            );
            labels.push(self.labels[index]);
        }
        Batch::Classification { inputs, labels }
    }
}

impl SequenceData {
    fn batch(&self, start: usize, end: usize, n: usize, rng: &mut SplitMix64) -> Batch {
        let window = self.context_length + 1;
        let positions = (end - start).saturating_sub(window) + 1;
        let mut tokens = Vec::with_capacity(n * window);
        for _ in 0..n {
            let offset = start + rng.below(positions);
            tokens.extend(
                self.tokens[offset..offset + window]
                    .iter()
                    .map(|&t| i32::from(t)),
            );
        }
        Batch::Sequences { tokens }
    }
}

fn classes_of(model: &ModelSpec) -> usize {
    match model {
        ModelSpec::Mlp(m) => m.classes,
        ModelSpec::Cnn(c) => c.classes,
        ModelSpec::Transformer(t) => t.vocab_size,
    }
}

/// Splits `n` samples into shuffled training and validation indices.
fn split_indices(n: usize, fraction: f64, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut rng = SplitMix64::new(seed ^ 0x5EED);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let valid = ((n as f64 * fraction).round() as usize).clamp(1, n.saturating_sub(1).max(1));
    let train = order.split_off(valid);
    (train, order)
}

/// Inputs labelled by a fixed random "teacher" network, so the task is
/// learnable and the learning rate matters.
fn teacher_samples(
    seed: u64,
    samples: usize,
    model: &ModelSpec,
    fraction: f64,
) -> Result<ClassificationData, DataError> {
    let mut rng = SplitMix64::new(seed);
    let (sample_len, image_shape, classes) = match model {
        ModelSpec::Mlp(m) => {
            let input = m.input_size.ok_or_else(|| {
                DataError::Shape("model.input_size is required for synthetic data".into())
            })?;
            (input, None, m.classes)
        }
        ModelSpec::Cnn(c) => (
            c.channels * c.height * c.width,
            Some([c.channels, c.height, c.width]),
            c.classes,
        ),
        ModelSpec::Transformer(_) => unreachable!("sequences are generated by markov_sequences"),
    };
    // The teacher sees a low-dimensional latent: the raw input for the MLP,
    // a coarse image (1/4 resolution) for the CNN, upsampled with noise.
    let (latent_len, upsample) = match image_shape {
        None => (sample_len, None),
        Some([c, h, w]) => {
            let (lh, lw) = (h.div_ceil(4).max(1), w.div_ceil(4).max(1));
            (c * lh * lw, Some((c, h, w, lh, lw)))
        }
    };
    let hidden = 64;
    let w1: Vec<f64> = (0..latent_len * hidden)
        .map(|_| rng.normal() / (latent_len as f64).sqrt())
        .collect();
    let w2: Vec<f64> = (0..hidden * classes)
        .map(|_| rng.normal() / (hidden as f64).sqrt())
        .collect();
    let mut inputs = Vec::with_capacity(samples * sample_len);
    let mut labels = Vec::with_capacity(samples);
    let mut latent = vec![0.0f64; latent_len];
    let mut h = vec![0.0f64; hidden];
    for _ in 0..samples {
        latent.iter_mut().for_each(|z| *z = rng.normal());
        for (j, hj) in h.iter_mut().enumerate() {
            let mut sum = 0.0;
            for (i, z) in latent.iter().enumerate() {
                sum += z * w1[i * hidden + j];
            }
            *hj = sum.tanh();
        }
        let label = (0..classes)
            .map(|k| (0..hidden).map(|j| h[j] * w2[j * classes + k]).sum::<f64>())
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(0, |(k, _)| k);
        labels.push(label as i32);
        match upsample {
            None => inputs.extend(latent.iter().map(|&z| z as f32)),
            Some((c, hh, ww, lh, lw)) => {
                for ch in 0..c {
                    for y in 0..hh {
                        for x in 0..ww {
                            let z = latent[ch * lh * lw + (y * lh / hh) * lw + (x * lw / ww)];
                            inputs.push((z + 0.3 * rng.normal()) as f32);
                        }
                    }
                }
            }
        }
    }
    let (train, valid) = split_indices(samples, fraction, seed);
    Ok(ClassificationData {
        sample_len,
        image_shape,
        classes,
        inputs,
        labels,
        train,
        valid,
    })
}

/// Token sequences from a random sparse Markov chain: each token has a few
/// likely successors, so a model can learn the transitions.
fn markov_sequences(
    seed: u64,
    samples: usize,
    vocab: usize,
    context: usize,
    fraction: f64,
) -> SequenceData {
    let mut rng = SplitMix64::new(seed);
    let fanout = 4.min(vocab);
    let successors: Vec<[usize; 4]> = (0..vocab)
        .map(|_| {
            let mut next = [0usize; 4];
            next.iter_mut().for_each(|n| *n = rng.below(vocab));
            next
        })
        .collect();
    let length = samples * (context + 1);
    let mut tokens = Vec::with_capacity(length);
    let mut current = rng.below(vocab);
    for _ in 0..length {
        tokens.push(current as u16);
        // Mostly follow the chain's first successors, sometimes jump.
        current = if rng.uniform() < 0.05 {
            rng.below(vocab)
        } else {
            let r = rng.uniform();
            let choice = if r < 0.5 {
                0
            } else if r < 0.8 {
                1
            } else if r < 0.95 {
                2
            } else {
                3
            };
            successors[current][choice.min(fanout - 1)]
        };
    }
    let split = split_point(tokens.len(), fraction, context);
    SequenceData {
        vocab_size: vocab,
        context_length: context,
        tokens,
        split,
    }
}

fn split_point(len: usize, fraction: f64, context: usize) -> usize {
    let valid = ((len as f64 * fraction) as usize).max(context + 1);
    len.saturating_sub(valid)
}

fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn text_corpus(
    path: &Path,
    context: usize,
    vocab: usize,
    fraction: f64,
) -> Result<SequenceData, DataError> {
    let bytes = read(path)?;
    if vocab < 256 {
        return Err(DataError::Shape(format!(
            "text data is byte-level and needs vocab_size >= 256, got {vocab}"
        )));
    }
    let window = context + 1;
    let split = split_point(bytes.len(), fraction, context);
    if split < window {
        return Err(format_error(
            path,
            format!(
                "{} bytes are too few for windows of {window} bytes in both the training and validation splits",
                bytes.len()
            ),
        ));
    }
    Ok(SequenceData {
        vocab_size: vocab,
        context_length: context,
        tokens: bytes.into_iter().map(u16::from).collect(),
        split,
    })
}

fn csv_file(
    path: &Path,
    label_column: &LabelColumn,
    has_header: bool,
    delimiter: char,
    classes: usize,
    fraction: f64,
) -> Result<ClassificationData, DataError> {
    let bytes = read(path)?;
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
    if labels.len() < 2 {
        return Err(format_error(path, "needs at least 2 data rows"));
    }
    let sample_len = inputs.len() / labels.len();
    standardize(&mut inputs, sample_len);
    let (train, valid) = split_indices(labels.len(), fraction, labels.len() as u64);
    Ok(ClassificationData {
        sample_len,
        image_shape: None,
        classes,
        inputs,
        labels,
        train,
        valid,
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

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Reads an IDX file's header: element type code and dimensions.
fn idx_header(path: &Path, bytes: &[u8]) -> Result<(u8, Vec<usize>, usize), DataError> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(format_error(path, "is not an IDX file (bad magic number)"));
    }
    let (kind, dims) = (bytes[2], bytes[3] as usize);
    let header = 4 + 4 * dims;
    if dims == 0 || bytes.len() < header {
        return Err(format_error(path, "has a truncated IDX header"));
    }
    let shape: Vec<usize> = (0..dims)
        .map(|d| be_u32(bytes, 4 + 4 * d) as usize)
        .collect();
    Ok((kind, shape, header))
}

fn idx_files(
    images: &Path,
    labels_path: &Path,
    classes: usize,
    fraction: f64,
) -> Result<ClassificationData, DataError> {
    let image_bytes = read(images)?;
    let (kind, shape, header) = idx_header(images, &image_bytes)?;
    if kind != 0x08 {
        return Err(format_error(images, format!("element type 0x{kind:02x} is not supported; batchd reads unsigned-byte (0x08) IDX images")));
    }
    if shape.len() != 3 {
        return Err(format_error(
            images,
            format!(
                "expected 3 dimensions (count, rows, columns), got {}",
                shape.len()
            ),
        ));
    }
    let (count, rows, cols) = (shape[0], shape[1], shape[2]);
    let needed = header + count * rows * cols;
    if image_bytes.len() < needed {
        return Err(format_error(
            images,
            format!(
                "is truncated: {} bytes, the header promises {needed}",
                image_bytes.len()
            ),
        ));
    }
    let label_bytes = read(labels_path)?;
    let (kind, label_shape, label_header) = idx_header(labels_path, &label_bytes)?;
    if kind != 0x08 || label_shape.len() != 1 {
        return Err(format_error(
            labels_path,
            "expected a 1-dimensional unsigned-byte IDX label file",
        ));
    }
    if label_shape[0] != count {
        return Err(format_error(
            labels_path,
            format!(
                "holds {} labels but {} holds {count} images",
                label_shape[0],
                images.display()
            ),
        ));
    }
    if label_bytes.len() < label_header + count {
        return Err(format_error(labels_path, "is truncated"));
    }
    let labels: Vec<i32> = label_bytes[label_header..label_header + count]
        .iter()
        .map(|&b| i32::from(b))
        .collect();
    if let Some((i, bad)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        return Err(format_error(
            labels_path,
            format!(
                "label {bad} of image {i} is out of range for {classes} classes (0..{})",
                classes - 1
            ),
        ));
    }
    let mut inputs: Vec<f32> = image_bytes[header..needed]
        .iter()
        .map(|&b| f32::from(b) / 255.0)
        .collect();
    // One mean and scale for all pixels keeps the images' spatial structure.
    let mean = inputs.iter().map(|&v| f64::from(v)).sum::<f64>() / inputs.len().max(1) as f64;
    let std = (inputs
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / inputs.len().max(1) as f64)
        .sqrt();
    inputs
        .iter_mut()
        .for_each(|v| *v = ((f64::from(*v) - mean) / std.max(1e-6)) as f32);
    let (train, valid) = split_indices(count, fraction, count as u64);
    Ok(ClassificationData {
        sample_len: rows * cols,
        image_shape: Some([1, rows, cols]),
        classes,
        inputs,
        labels,
        train,
        valid,
    })
}

/// Checks loaded samples against the model's input and fills in the shape.
fn fit_to_model(
    mut data: ClassificationData,
    model: &ModelSpec,
) -> Result<ClassificationData, DataError> {
    match model {
        ModelSpec::Mlp(m) => {
            if let Some(input) = m.input_size {
                if input != data.sample_len {
                    return Err(DataError::Shape(format!(
                        "model.input_size is {input} but the data has {} values per sample",
                        data.sample_len
                    )));
                }
            }
            data.image_shape = None;
        }
        ModelSpec::Cnn(c) => {
            let wanted = c.channels * c.height * c.width;
            if wanted != data.sample_len {
                return Err(DataError::Shape(format!(
                    "the CNN expects {}x{}x{} = {wanted} values per sample, the data has {}",
                    c.height, c.width, c.channels, data.sample_len
                )));
            }
            if let Some([_, rows, cols]) = data.image_shape {
                if (rows, cols) != (c.height, c.width) {
                    return Err(DataError::Shape(format!(
                        "the images are {rows}x{cols}, the CNN expects {}x{}",
                        c.height, c.width
                    )));
                }
            }
            data.image_shape = Some([c.channels, c.height, c.width]);
        }
        ModelSpec::Transformer(_) => {
            return Err(DataError::Shape(
                "a transformer needs text or synthetic data".into(),
            ))
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Activation, MlpSpec};

    fn repo(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
    }

    fn mlp(input: Option<usize>) -> ModelSpec {
        ModelSpec::Mlp(MlpSpec {
            input_size: input,
            hidden: vec![8],
            classes: 10,
            activation: Activation::Relu,
            dropout: 0.0,
        })
    }

    #[test]
    fn synthetic_data_is_deterministic_and_uses_every_class() {
        let a = teacher_samples(3, 2000, &mlp(Some(16)), 0.1).unwrap();
        let b = teacher_samples(3, 2000, &mlp(Some(16)), 0.1).unwrap();
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.inputs, b.inputs);
        let used: std::collections::BTreeSet<_> = a.labels.iter().collect();
        assert!(
            used.len() >= 5,
            "a teacher that labels everything alike teaches nothing: {used:?}"
        );
        assert_eq!(a.valid.len(), 200);
        assert_eq!(a.train.len(), 1800);
    }

    #[test]
    fn digits_csv_loads_standardized() {
        let data = csv_file(
            &repo("tests/data/digits.csv"),
            &LabelColumn::Name("label".into()),
            true,
            ',',
            10,
            0.2,
        )
        .unwrap();
        assert_eq!(data.sample_len, 64);
        assert_eq!(data.labels.len(), 1797);
        let mean: f64 = (0..data.labels.len())
            .map(|r| f64::from(data.inputs[r * 64 + 20]))
            .sum::<f64>()
            / 1797.0;
        assert!(mean.abs() < 1e-4);
    }

    #[test]
    fn csv_errors_are_precise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        std::fs::write(&path, "a,b,label\n1,2,0\n3,x,1\n").unwrap();
        let error =
            csv_file(&path, &LabelColumn::Name("label".into()), true, ',', 2, 0.2).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("line 3, column `b`: `x` is not a number"),
            "{error}"
        );
        std::fs::write(&path, "a,b,label\n1,2,0\n3,4,7\n").unwrap();
        let error =
            csv_file(&path, &LabelColumn::Name("label".into()), true, ',', 2, 0.2).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("label 7 is out of range for 2 classes"),
            "{error}"
        );
        let error = csv_file(&path, &LabelColumn::Name("y".into()), true, ',', 2, 0.2).unwrap_err();
        assert!(error.to_string().contains("no column named `y`"), "{error}");
        let error = csv_file(
            &dir.path().join("missing.csv"),
            &LabelColumn::Index(0),
            false,
            ',',
            2,
            0.2,
        )
        .unwrap_err();
        assert!(error.to_string().contains("cannot read"), "{error}");
    }

    #[test]
    fn digits_idx_matches_the_csv() {
        let data = idx_files(
            &repo("tests/data/digits-images.idx"),
            &repo("tests/data/digits-labels.idx"),
            10,
            0.2,
        )
        .unwrap();
        assert_eq!(data.image_shape, Some([1, 8, 8]));
        assert_eq!(data.labels.len(), 1797);
        let csv = csv_file(
            &repo("tests/data/digits.csv"),
            &LabelColumn::Name("label".into()),
            true,
            ',',
            10,
            0.2,
        )
        .unwrap();
        assert_eq!(data.labels, csv.labels);
    }

    #[test]
    fn idx_label_out_of_range_is_reported() {
        let error = idx_files(
            &repo("tests/data/digits-images.idx"),
            &repo("tests/data/digits-labels.idx"),
            5,
            0.2,
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("out of range for 5 classes"),
            "{error}"
        );
    }

    #[test]
    fn text_windows_stay_inside_their_split() {
        let data = text_corpus(&repo("tests/data/corpus.txt"), 32, 256, 0.1).unwrap();
        let mut rng = SplitMix64::new(1);
        let Batch::Sequences { tokens } = data.batch(0, data.split, 64, &mut rng) else {
            panic!()
        };
        assert_eq!(tokens.len(), 64 * 33);
        assert!(tokens.iter().all(|&t| (0..256).contains(&t)));
    }

    #[test]
    fn markov_data_is_learnable_structure() {
        let data = markov_sequences(1, 200, 64, 16, 0.1);
        // Successor entropy is low: count distinct successors per token.
        let mut successors = vec![std::collections::BTreeSet::new(); 64];
        for pair in data.tokens.windows(2) {
            successors[pair[0] as usize].insert(pair[1]);
        }
        let mean = successors.iter().map(|s| s.len()).sum::<usize>() as f64 / 64.0;
        assert!(mean < 16.0, "successors per token {mean}");
    }
}
