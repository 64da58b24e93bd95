//! Job specs: the user's description of a training job, parsed from TOML,
//! YAML or JSON into a validated [`JobSpec`].
//!
//! `docs/spec.md` documents every field. Parsing reports every problem it can
//! find, each with the file and the field path, e.g.
//! `jobs/a.toml: model.hidden[1]: must be > 0, got 0`.

mod command;
mod data;
mod kind;
mod model;
mod optimizer;
pub mod read;
mod search;
mod training;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use command::{CommandSpec, Workload};
pub use data::{DataSource, DataSpec, LabelColumn};
pub use model::{Activation, CnnSpec, MlpSpec, ModelSpec, TransformerSpec};
pub use optimizer::{AdamSettings, OptimizerSpec};
pub use search::{DeviceChoice, NotADevice, SearchSpec, DEFAULT_MAX_BATCH};
pub use training::{Precision, TrainingSpec};

use crate::policy::{valid_name, Policy, PolicySet, DEFAULT_POLICY};
use crate::validation::{
    deserialize_section, parse_document, top_level, DocumentErrors, FieldError, Problems, Syntax,
};

/// A validated job spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    pub description: Option<String>,
    /// The policy name as written (before overrides).
    pub policy_name: String,
    /// The policy with the spec's inline overrides applied.
    pub policy: Policy,
    /// What trains: a built-in model on built-in data, or a command.
    #[serde(flatten)]
    pub workload: Workload,
    pub optimizer: OptimizerSpec,
    pub precision: Precision,
    pub training: TrainingSpec,
    pub search: SearchSpec,
    /// SHA-256 of the spec's text, so changed specs can be told apart.
    pub content_hash: String,
}

impl JobSpec {
    /// One line for listings: `mlp on synthetic data, adamw, f32, policy balanced`.
    pub fn summary(&self) -> String {
        let what = match &self.workload {
            Workload::Builtin { model, data } => {
                format!("{} on {} data", model.kind(), data.source.kind())
            }
            Workload::Command(command) => format!("command `{}`", command.argv.join(" ")),
        };
        format!(
            "{what}, {}, {}, policy {}",
            self.optimizer.kind(),
            self.precision,
            self.policy_name
        )
    }

    /// The built-in model, unless the job runs a command.
    pub fn model(&self) -> Option<&ModelSpec> {
        match &self.workload {
            Workload::Builtin { model, .. } => Some(model),
            Workload::Command(_) => None,
        }
    }

    /// The built-in data source, unless the job runs a command.
    pub fn data(&self) -> Option<&DataSpec> {
        match &self.workload {
            Workload::Builtin { data, .. } => Some(data),
            Workload::Command(_) => None,
        }
    }

    /// The external command, for `runner = "command"` jobs.
    pub fn command(&self) -> Option<&CommandSpec> {
        match &self.workload {
            Workload::Command(command) => Some(command),
            Workload::Builtin { .. } => None,
        }
    }

    /// Whether the job's trials can change their batch mid-run: built-in
    /// ones always, command ones when the spec declares it.
    pub fn supports_batch_schedule(&self) -> bool {
        self.command().is_none_or(|c| c.batch_schedule)
    }

    /// Files the job reads: data files, for the data-roots check.
    pub fn data_files(&self) -> Vec<(&'static str, &Path)> {
        self.data().map(|d| d.source.files()).unwrap_or_default()
    }
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "name",
    "description",
    "policy",
    "policy_overrides",
    "runner",
    "command",
    "workdir",
    "environment",
    "persistent",
    "batch_schedule",
    "model",
    "data",
    "optimizer",
    "precision",
    "training",
    "search",
];

/// Where a spec's text came from, which decides its default name and how
/// relative data paths resolve.
#[derive(Debug, Clone)]
pub struct SpecOrigin {
    /// Label used in error messages: the file path, or `<request body>`.
    pub label: String,
    /// The name to use when the spec has no `name` (the file stem).
    pub default_name: Option<String>,
    /// Folder that relative data paths are resolved against.
    pub base_dir: Option<PathBuf>,
}

impl SpecOrigin {
    pub fn file(path: &Path) -> SpecOrigin {
        SpecOrigin {
            label: path.display().to_string(),
            default_name: path
                .file_stem()
                .and_then(|s| s.to_str())
                .map(str::to_string),
            base_dir: Some(
                path.parent()
                    .map(|p| {
                        if p.as_os_str().is_empty() {
                            Path::new(".")
                        } else {
                            p
                        }
                    })
                    .unwrap_or(Path::new("."))
                    .to_path_buf(),
            ),
        }
    }
}

/// Reads, parses and validates a spec file. The file's extension picks the
/// syntax. Data files are checked for existence.
/// The largest spec file read unless configured otherwise.
pub const DEFAULT_SPEC_FILE_LIMIT: u64 = 1 << 20;

pub fn load_spec_file(
    path: &Path,
    policies: &PolicySet,
    max_bytes: u64,
) -> Result<JobSpec, DocumentErrors> {
    let origin = SpecOrigin::file(path);
    let fail = |error: FieldError| DocumentErrors {
        source: origin.label.clone(),
        errors: vec![error],
    };
    let syntax = Syntax::from_path(path).ok_or_else(|| {
        fail(FieldError::new(
            "",
            "unsupported file extension: job specs are .toml, .yaml, .yml or .json",
        ))
    })?;
    let text = read::read_spec_text(path, max_bytes)
        .map_err(|e| fail(FieldError::new("", format!("the file {e}"))))?;
    let spec = parse_spec(&text, syntax, &origin, policies)?;
    let mut problems = Problems::new();
    check_data_files(&spec, &mut problems);
    problems.finish(&origin.label, spec)
}

/// Checks that the files a spec's data source names exist and are files,
/// and for a command job that its folder and program exist.
pub fn check_data_files(spec: &JobSpec, problems: &mut Problems) {
    if let Some(command) = spec.command() {
        command::check_command(command, problems);
    }
    for (field, file) in spec.data_files() {
        match std::fs::metadata(file) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => problems.push(field, format!("{} is not a file", file.display())),
            Err(e) => problems.push(field, format!("cannot open {}: {e}", file.display())),
        }
    }
}

/// Parses and validates spec text.
pub fn parse_spec(
    text: &str,
    syntax: Syntax,
    origin: &SpecOrigin,
    policies: &PolicySet,
) -> Result<JobSpec, DocumentErrors> {
    let mut problems = Problems::new();
    let spec = match parse_document(text, syntax) {
        Ok(Value::Null) => {
            problems.push("", "the spec is empty");
            None
        }
        Ok(document) => {
            validate_document(&document, origin, policies, &mut problems).map(|mut spec| {
                // The resolved policy is part of the work: editing a policy
                // file (and reloading) must not reuse answers made under
                // the old one.
                let policy = serde_json::to_string(&spec.policy).unwrap_or_default();
                spec.content_hash =
                    hex_sha256(&[text.as_bytes(), b"\0", policy.as_bytes()].concat());
                spec
            })
        }
        Err(error) => {
            problems.extend([error]);
            None
        }
    };
    match spec {
        Some(spec) if problems.is_empty() => Ok(spec),
        _ => Err(DocumentErrors {
            source: origin.label.clone(),
            errors: problems
                .into_errors()
                .into_iter()
                .map(hint_misplaced_top_level_key)
                .collect(),
        }),
    }
}

/// In TOML, a key written after a `[table]` header belongs to that table, so
/// `precision = "bf16"` below `[optimizer]` becomes `optimizer.precision`.
/// Say so, because the plain "unknown key" leaves users puzzled.
fn hint_misplaced_top_level_key(mut error: FieldError) -> FieldError {
    if let Some((section, key)) = error.field.split_once('.') {
        let unknown = error.message.starts_with(&format!("unknown key `{key}`"));
        if unknown && TOP_LEVEL_KEYS.contains(&key) && !key.contains('.') {
            error.message.push_str(&format!(
                " (`{key}` is a top-level key: in TOML, move it above the first [table] header, \
                 or it belongs to [{section}])"
            ));
        }
    }
    error
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn validate_document(
    document: &Value,
    origin: &SpecOrigin,
    policies: &PolicySet,
    problems: &mut Problems,
) -> Option<JobSpec> {
    let object = top_level(document, TOP_LEVEL_KEYS, problems)?;
    if object.is_empty() {
        problems.push("", "the spec is empty");
        return None;
    }

    let name = match object.get("name") {
        Some(Value::String(name)) => Some(name.clone()),
        Some(other) => {
            problems.push("name", format!("must be a string, got {other}"));
            None
        }
        None => origin.default_name.clone(),
    };
    match &name {
        Some(name) if !valid_name(name) => problems.push(
            "name",
            format!("`{name}` is not a usable job name: use letters, digits, '.', '-' and '_'"),
        ),
        None if !object.contains_key("name") => problems.push(
            "name",
            "missing; a spec sent without a file name must set `name`",
        ),
        _ => {}
    }
    let description = match object.get("description") {
        None => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(other) => {
            problems.push("description", format!("must be a string, got {other}"));
            None
        }
    };

    let policy_name = match object.get("policy") {
        None => DEFAULT_POLICY.to_string(),
        Some(Value::String(policy)) => policy.clone(),
        Some(other) => {
            problems.push(
                "policy",
                format!("must be a policy name (a string), got {other}; put settings under [policy_overrides]"),
            );
            DEFAULT_POLICY.to_string()
        }
    };
    let policy = match policies.resolve(
        &policy_name,
        object.get("policy_overrides"),
        "policy_overrides",
    ) {
        Ok(policy) => Some(policy),
        Err(errors) => {
            problems.extend(errors);
            None
        }
    };

    let command = command::parse_command(object, origin.base_dir.as_deref(), problems);
    let is_builtin = matches!(command, Some(None));
    let model = match object.get("model") {
        Some(value) if is_builtin => model::parse_model(value, problems),
        None if is_builtin => {
            problems.push(
                "model",
                "missing; every spec needs a [model] table (or runner = \"command\")",
            );
            None
        }
        _ => None,
    };
    let data = match object.get("data") {
        Some(value) if is_builtin => data::parse_data(value, origin.base_dir.as_deref(), problems),
        None if is_builtin => {
            problems.push(
                "data",
                "missing; every spec needs a [data] table (or runner = \"command\")",
            );
            None
        }
        _ => None,
    };
    let optimizer = match object.get("optimizer") {
        Some(value) => optimizer::parse_optimizer(value, problems),
        None => {
            problems.push(
                "optimizer",
                "missing; every spec needs an [optimizer] table",
            );
            None
        }
    };
    let precision = match object.get("precision") {
        None => Some(Precision::F32),
        Some(value) => deserialize_section::<Precision>(value, "precision", problems),
    };
    let training = training::parse_training(object.get("training"), problems);
    let search = search::parse_search(object.get("search"), problems);

    if let (Some(model), Some(data)) = (&model, &data) {
        check_model_fits_data(model, data, problems);
    }
    if let (Some(training), Some(search)) = (&training, &search) {
        if let Some(size) = training.dataset_size {
            let per_replica = size / u64::from(training.world_size.max(1));
            if search.min_batch > per_replica {
                problems.push(
                    "search.min_batch",
                    format!(
                        "must not exceed the samples each replica sees per epoch ({per_replica}), got {}",
                        search.min_batch
                    ),
                );
            }
        }
    }

    let workload = match command? {
        Some(command) => Workload::Command(command),
        None => Workload::Builtin {
            model: model?,
            data: data?,
        },
    };
    Some(JobSpec {
        name: name?,
        description,
        policy_name,
        policy: policy?,
        workload,
        optimizer: optimizer?,
        precision: precision?,
        training: training?,
        search: search?,
        content_hash: String::new(),
    })
}

/// Which data sources each model can train on, and shape checks that need
/// no file access.
fn check_model_fits_data(model: &ModelSpec, data: &DataSpec, problems: &mut Problems) {
    let data_kind = data.source.kind();
    let accepted: &[&str] = match model {
        ModelSpec::Mlp(_) => &["synthetic", "csv", "idx"],
        ModelSpec::Cnn(_) => &["synthetic", "csv", "idx"],
        ModelSpec::Transformer(_) => &["synthetic", "text"],
    };
    if !accepted.contains(&data_kind) {
        problems.push(
            "data.kind",
            format!(
                "a {} model cannot train on {data_kind} data; it accepts: {}",
                model.kind(),
                accepted.join(", ")
            ),
        );
        return;
    }
    match (model, &data.source) {
        (ModelSpec::Mlp(mlp), DataSource::Synthetic { .. }) if mlp.input_size.is_none() => problems.push(
            "model.input_size",
            "missing; synthetic data has no natural width, so the MLP must state its input_size",
        ),
        (ModelSpec::Transformer(t), DataSource::Text { .. }) if t.vocab_size < 256 => problems.push(
            "model.vocab_size",
            format!("text data is byte-level and needs a vocabulary of at least 256, got {}", t.vocab_size),
        ),
        (ModelSpec::Cnn(cnn), DataSource::Idx { .. }) if cnn.channels != 1 => problems.push(
            "model.channels",
            format!("idx images have one channel, got {}", cnn.channels),
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobSpec, DocumentErrors> {
        let origin = SpecOrigin {
            label: "jobs/a.toml".into(),
            default_name: Some("a".into()),
            base_dir: Some(PathBuf::from("jobs")),
        };
        parse_spec(text, Syntax::Toml, &origin, &PolicySet::builtin())
    }

    const MINIMAL: &str = r#"
[model]
kind = "mlp"
input_size = 32
hidden = [64, 64]
classes = 10

[data]
kind = "synthetic"

[optimizer]
kind = "adamw"
"#;

    #[test]
    fn minimal_spec_gets_documented_defaults() {
        let spec = parse(MINIMAL).unwrap();
        assert_eq!(spec.name, "a");
        assert_eq!(spec.policy_name, "balanced");
        assert_eq!(spec.precision, Precision::F32);
        assert_eq!(spec.search.device, DeviceChoice::Auto);
        assert_eq!(spec.search.max_batch, DEFAULT_MAX_BATCH);
        assert_eq!(spec.training.world_size, 1);
        assert_eq!(spec.data().unwrap().validation_fraction, 0.1);
        assert!(matches!(&spec.optimizer, OptimizerSpec::AdamW(adam) if adam.weight_decay == 0.01));
        assert_eq!(spec.content_hash.len(), 64);
    }

    #[test]
    fn the_issue_example_error_is_exact() {
        let text = MINIMAL.replace("[64, 64]", "[64, 0]");
        let error = parse(&text).unwrap_err().to_string();
        assert_eq!(error, "jobs/a.toml: model.hidden[1]: must be > 0, got 0");
    }

    #[test]
    fn every_error_in_a_document_is_reported() {
        let text = r#"
polcy = "balanced"
[model]
kind = "mlp"
input_size = -3
hidden = [64]
classes = 10
[data]
kind = "synthetic"
validation_fraction = 0.9
[optimizer]
kind = "adamm"
[search]
min_batch = 64
max_batch = 8
"#;
        let errors = parse(text).unwrap_err();
        let fields: Vec<_> = errors.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "polcy",
                "model.input_size",
                "data.validation_fraction",
                "optimizer.kind",
                "search.max_batch"
            ],
            "{errors}"
        );
        assert!(errors.errors[0].message.contains("did you mean `policy`?"));
        assert!(errors.errors[3].message.contains("did you mean `adam`?"));
    }

    #[test]
    fn model_and_data_must_agree() {
        let text = MINIMAL.replace(
            "kind = \"synthetic\"",
            "kind = \"text\"\npath = \"corpus.txt\"",
        );
        let error = parse(&text).unwrap_err().to_string();
        assert!(
            error.contains("data.kind: a mlp model cannot train on text data"),
            "{error}"
        );
    }

    #[test]
    fn relative_data_paths_resolve_against_the_spec_folder() {
        let text = MINIMAL.replace(
            "kind = \"synthetic\"",
            "kind = \"csv\"\npath = \"data/x.csv\"\nlabel_column = \"y\"",
        );
        let spec = parse(&text).unwrap();
        assert_eq!(spec.data_files()[0].1, Path::new("jobs/data/x.csv"));
    }

    #[test]
    fn yaml_and_json_parse_to_the_same_spec() {
        let from_toml = parse(MINIMAL).unwrap();
        let value: Value =
            serde_json::to_value(toml::from_str::<toml::Table>(MINIMAL).unwrap()).unwrap();
        let origin = SpecOrigin {
            label: "jobs/a.json".into(),
            default_name: Some("a".into()),
            base_dir: Some(PathBuf::from("jobs")),
        };
        let json = serde_json::to_string(&value).unwrap();
        let from_json = parse_spec(&json, Syntax::Json, &origin, &PolicySet::builtin()).unwrap();
        let yaml = serde_yaml_ng::to_string(&value).unwrap();
        let from_yaml = parse_spec(&yaml, Syntax::Yaml, &origin, &PolicySet::builtin()).unwrap();
        assert_eq!(from_toml.workload, from_json.workload);
        assert_eq!(from_toml.workload, from_yaml.workload);
        assert_eq!(from_toml.optimizer, from_yaml.optimizer);
    }

    #[test]
    fn half_written_file_is_a_syntax_error_with_a_location() {
        let cut = &MINIMAL[..MINIMAL.find("hidden = [64").unwrap() + 10];
        let error = parse(cut).unwrap_err().to_string();
        assert!(
            error.starts_with("jobs/a.toml: TOML syntax error at line"),
            "{error}"
        );
    }

    #[test]
    fn a_top_level_key_under_a_table_gets_explained() {
        let text = format!("{MINIMAL}precision = \"bf16\"\n");
        let error = parse(&text).unwrap_err().to_string();
        assert!(
            error.contains("optimizer.precision: unknown key `precision`"),
            "{error}"
        );
        assert!(
            error.contains("move it above the first [table] header"),
            "{error}"
        );
    }

    #[test]
    fn policy_overrides_apply() {
        let text = format!("{MINIMAL}\n[policy_overrides]\nmemory_headroom_fraction = 0.25\n");
        let spec = parse(&text).unwrap();
        assert_eq!(spec.policy.memory_headroom_fraction, 0.25);
    }
}
