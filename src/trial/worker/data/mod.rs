//! Data sources for trials, loaded once into memory with a held-out split.
//!
//! Nothing here depends on Burn: batches come out as flat vectors that the
//! engine turns into tensors. Batches are drawn with replacement from a
//! seeded generator, so any batch size can be tried (a max-fit search probes
//! batches larger than small datasets) and runs are reproducible.

use std::path::{Path, PathBuf};

mod cache;
mod csv;
mod idx;
mod synthetic;
mod text;

use csv::csv_file;
use idx::idx_files;
use synthetic::{markov_sequences, teacher_samples};
use text::text_corpus;

use crate::spec::{DataSource, DataSpec, LabelColumn, ModelSpec};

/// Most distinct values (levels) a CSV text feature column may have
/// (`csv`; the cache sizes its entries by it). Each level becomes one
/// input, so a column with more is more likely an identifier or free text
/// than a category, and is refused.
pub const MAX_TEXT_LEVELS: usize = 32;

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
    #[error("{path}: {source}")]
    Csv {
        path: PathBuf,
        #[source]
        source: Box<csv::CsvError>,
    },
    #[error("{0}")]
    Shape(String),
}

/// Samples a dataset needs: one to train on and one to validate with
/// ([`split_indices`] takes at least one of each).
const MIN_SAMPLES: usize = 2;

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
    pub inputs: Vec<f32>,
    pub labels: Vec<i32>,
    pub train: Vec<u32>,
    pub valid: Vec<u32>,
}

/// A token stream read in windows (transformer inputs).
#[derive(Debug, Clone)]
pub struct SequenceData {
    pub context_length: usize,
    pub tokens: Vec<u16>,
    /// `tokens[..split]` is training data, `tokens[split..]` validation.
    pub split: usize,
}

/// How a dataset was loaded.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Read from the parsed-data cache.
    pub from_cache: bool,
    /// For the trial's report (a cache entry that was refused).
    pub warnings: Vec<String>,
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
    /// Loads (or generates) the spec's data for its model. Parsed tabular
    /// data is kept in `cache` (a folder) for the next trial; the flag says
    /// whether this load came from there.
    /// Loads the data; [`Loaded`] says whether it came from the cache,
    /// with any warning for the trial's report.
    pub fn load(
        data: &DataSpec,
        model: &ModelSpec,
        cache: Option<&Path>,
    ) -> Result<(Dataset, Loaded), DataError> {
        let fraction = data.validation_fraction;
        let mut loaded = Loaded::default();
        let dataset = Self::load_source(data, model, fraction, cache, &mut loaded)?;
        Ok((dataset, loaded))
    }

    fn load_source(
        data: &DataSpec,
        model: &ModelSpec,
        fraction: f64,
        cache: Option<&Path>,
        loaded: &mut Loaded,
    ) -> Result<Dataset, DataError> {
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
                let (data, cached) = csv_file(
                    path,
                    label_column,
                    *has_header,
                    *delimiter,
                    classes_of(model),
                    fraction,
                    cache,
                )?;
                loaded.from_cache = cached.is_cached();
                if let csv::Source::Parsed {
                    refused: Some(warning),
                } = cached
                {
                    loaded.warnings.push(warning);
                }
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
            None,
        )
        .unwrap()
        .0;
        assert_eq!(data.sample_len, 64);
        assert_eq!(data.labels.len(), 1797);
        let mean: f64 = (0..data.labels.len())
            .map(|r| f64::from(data.inputs[r * 64 + 20]))
            .sum::<f64>()
            / 1797.0;
        assert!(mean.abs() < 1e-4);
    }

    #[test]
    fn a_csv_is_parsed_once_then_read_from_the_cache_until_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let path = dir.path().join("d.csv");
        std::fs::write(&path, "a,b,label\n1,2,0\n3,4,1\n5,7,0\n").unwrap();
        let load = || {
            csv_file(
                &path,
                &LabelColumn::Index(2),
                true,
                ',',
                2,
                0.34,
                Some(&cache),
            )
            .unwrap()
        };
        let (parsed, from_cache) = load();
        assert!(!from_cache.is_cached(), "the first load parses");
        let (cached, from_cache) = load();
        assert!(from_cache.is_cached(), "the second load reads the cache");
        assert_eq!(
            (&cached.inputs, &cached.labels, &cached.train, &cached.valid),
            (&parsed.inputs, &parsed.labels, &parsed.train, &parsed.valid)
        );
        std::fs::write(&path, "a,b,label\n1,2,0\n3,4,1\n5,9,1\n").unwrap();
        let (changed, from_cache) = load();
        assert!(!from_cache.is_cached(), "a changed file is parsed again");
        assert_eq!(changed.labels, vec![0, 1, 1]);
        // Other settings over the same bytes are another entry.
        let (_, from_cache) = csv_file(
            &path,
            &LabelColumn::Index(2),
            true,
            ',',
            3,
            0.34,
            Some(&cache),
        )
        .unwrap();
        assert!(!from_cache.is_cached());
    }

    #[test]
    fn csv_errors_are_precise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        let error_with_label = |label: &str| {
            csv_file(
                &path,
                &LabelColumn::Name(label.into()),
                true,
                ',',
                2,
                0.2,
                None,
            )
            .unwrap_err()
        };
        std::fs::write(&path, "a,b,label\n1,2,0\n3,x,1\n").unwrap();
        let error = error_with_label("label");
        assert!(
            error
                .to_string()
                .contains("line 3, column `b`: `x` is not a number"),
            "{error}"
        );
        std::fs::write(&path, "a,b,label\n1,2,0\n3,4,7\n").unwrap();
        let error = error_with_label("label");
        assert!(
            error
                .to_string()
                .contains("label 7 is out of range for 2 classes"),
            "{error}"
        );
        let error = error_with_label("y");
        assert!(error.to_string().contains("no column named `y`"), "{error}");
        let error = csv_file(
            &dir.path().join("missing.csv"),
            &LabelColumn::Index(0),
            false,
            ',',
            2,
            0.2,
            None,
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
            None,
        )
        .unwrap()
        .0;
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

    /// An IDX file with `kind` 0x08, the given sizes and `payload` bytes.
    fn idx(dir: &Path, name: &str, sizes: &[u32], payload: usize) -> PathBuf {
        let mut bytes = vec![0, 0, 0x08, sizes.len() as u8];
        for size in sizes {
            bytes.extend_from_slice(&size.to_be_bytes());
        }
        bytes.resize(bytes.len() + payload, 0);
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn idx_headers_that_overflow_or_overpromise_are_data_errors() {
        let dir = tempfile::tempdir().unwrap();
        let labels = idx(dir.path(), "labels.idx", &[1 << 22], 1 << 22);
        // 2^22 x 2^21 x 2^21 bytes is 2^64: wraps to 0 unchecked.
        let images = idx(dir.path(), "images.idx", &[1 << 22, 1 << 21, 1 << 21], 0);
        let error = idx_files(&images, &labels, 10, 0.2)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("IDX header promises 4194304 images of 2097152x2097152 pixels")
                && error.contains("more bytes than fit in memory"),
            "{error}"
        );
        let images = idx(dir.path(), "images.idx", &[4, 8, 8], 255);
        let labels = idx(dir.path(), "labels.idx", &[4], 4);
        let error = idx_files(&images, &labels, 10, 0.2)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("(272 bytes), the file holds 271 bytes"),
            "{error}"
        );
        let short = idx(dir.path(), "short.idx", &[4], 3);
        let images = idx(dir.path(), "images.idx", &[4, 8, 8], 256);
        let error = idx_files(&images, &short, 10, 0.2).unwrap_err().to_string();
        assert!(error.contains("is truncated: 11 bytes"), "{error}");
        assert!(idx_files(&images, &labels, 10, 0.2).is_ok());
        // Fewer images than a split needs, or empty images.
        for sizes in [[0, 8, 8], [1, 8, 8], [4, 0, 8]] {
            let images = idx(dir.path(), "images.idx", &sizes, 256);
            let labels = idx(dir.path(), "labels.idx", &[sizes[0]], 4);
            let error = idx_files(&images, &labels, 10, 0.2)
                .unwrap_err()
                .to_string();
            assert!(error.contains("a trial needs at least 2 images"), "{error}");
        }
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
