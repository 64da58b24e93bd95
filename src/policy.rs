//! Policies: named sets of knobs that turn measurements into a
//! recommendation (`policies/*.toml`).
//!
//! The four shipped policies are compiled into the binary, so batchd works
//! without any policy folder; files in the configured policies folder add new
//! policies or replace shipped ones of the same name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::validation::{
    deserialize_section, parse_document, DocumentErrors, FieldError, Problems, Syntax,
};

/// The policy a spec gets when it names none.
pub const DEFAULT_POLICY: &str = "balanced";

/// The policies shipped in `policies/`, embedded at build time.
const BUILTIN: &[(&str, &str)] = &[
    ("balanced.toml", include_str!("../policies/balanced.toml")),
    (
        "throughput.toml",
        include_str!("../policies/throughput.toml"),
    ),
    (
        "generalization.toml",
        include_str!("../policies/generalization.toml"),
    ),
    (
        "memory-safe.toml",
        include_str!("../policies/memory-safe.toml"),
    ),
];

/// What a recommendation optimizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Throughput x statistical efficiency (Pollux).
    Goodput,
    /// The largest batch that still raises samples per second.
    Throughput,
    /// Smaller batches and more updates.
    Generalization,
}

/// How a race that ends within seed noise is decided: the tied candidates
/// (within the seed-to-seed spread of the lowest mean) are equally good on
/// the evidence, so a rule, not the luck of the seeds, picks among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TieRule {
    /// The tied batch nearest (in log scale) the policy model's preferred
    /// batch, which weighs throughput against the noise scale; the larger on
    /// an exact tie of distances.
    NearestPreferred,
    /// The tied batch with the most samples per second on the measured
    /// curve: the throughput objective's own measure.
    Fastest,
    /// The tied batch with the lowest mean loss: the lead within noise, as
    /// before rules (kept for comparison; it is the seeds' luck).
    LowestMean,
}

impl TieRule {
    /// The rule an objective gets unless the policy names one.
    pub fn default_for(objective: Objective) -> TieRule {
        match objective {
            Objective::Throughput => TieRule::Fastest,
            Objective::Goodput | Objective::Generalization => TieRule::NearestPreferred,
        }
    }
}

impl std::fmt::Display for TieRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TieRule::NearestPreferred => "nearest the model's preferred batch",
            TieRule::Fastest => "the fastest on the throughput curve",
            TieRule::LowestMean => "the lowest mean, a lead within noise",
        })
    }
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Objective::Goodput => "goodput",
            Objective::Throughput => "throughput",
            Objective::Generalization => "generalization",
        })
    }
}

/// How the learning rate moves with batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LrScaling {
    /// Fit lr ~ B^alpha from the best LR measured at two batch sizes.
    Measured,
    /// lr ~ B (Goyal et al. 2017), the rule for SGD.
    Linear,
    /// lr ~ sqrt(B) (Malladi et al. 2022), the rule for Adam-family optimizers.
    Sqrt,
}

impl std::fmt::Display for LrScaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LrScaling::Measured => "measured",
            LrScaling::Linear => "linear",
            LrScaling::Sqrt => "sqrt",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSearch {
    pub min_lr: f64,
    pub max_lr: f64,
    pub sweep_steps: u32,
    pub confirmation_candidates: u32,
    /// Accepted from older policy files and ignored: confirmation runs
    /// now train for the search's planned run length.
    #[serde(default, skip_serializing)]
    pub confirmation_steps: Option<u32>,
    pub warmup_fraction: f64,
    /// Factor between neighbouring LR candidates in the confirmation and
    /// the check (3.16: half a decade).
    #[serde(default = "default_candidate_spacing")]
    pub candidate_spacing: f64,
    /// Confirmation runs beyond the candidates, at most, while the best
    /// LR sits at an edge of those tried.
    #[serde(default = "default_max_extensions")]
    pub max_extensions: u32,
    /// Race seeds each LR of the check at the winner is paired with.
    #[serde(default = "default_check_seeds")]
    pub check_seeds: u32,
    /// A planned confirmation LR is not run where, between it and a run
    /// already made, another run's loss came out more than this fraction
    /// above that run's (the loss has one minimum in log-LR).
    #[serde(default = "default_skip_past_rise")]
    pub skip_past_rise: f64,
}

fn default_candidate_spacing() -> f64 {
    3.16
}

fn default_max_extensions() -> u32 {
    3
}

fn default_check_seeds() -> u32 {
    2
}

fn default_skip_past_rise() -> f64 {
    0.2
}

/// Shares of the search's time budget, one per phase, planned before the
/// first trial (the training-run phases are re-planned by their run counts
/// once the early phases have measured what a run costs). They add up to 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetShares {
    pub max_fit: f64,
    pub throughput: f64,
    pub lr_range_test: f64,
    pub lr_confirmation: f64,
    pub race: f64,
    pub lr_check: f64,
    /// The batch ramp raced against the constant batch (0: never tried).
    pub ramp: f64,
}

impl Default for BudgetShares {
    fn default() -> Self {
        // The race gets the largest share: it measures what the policy
        // optimizes.
        BudgetShares {
            max_fit: 0.14,
            throughput: 0.08,
            lr_range_test: 0.06,
            lr_confirmation: 0.22,
            race: 0.40,
            lr_check: 0.10,
            ramp: 0.0,
        }
    }
}

impl BudgetShares {
    /// The shares with their field names, in phase order.
    pub fn named(&self) -> [(&'static str, f64); 7] {
        [
            ("max_fit", self.max_fit),
            ("throughput", self.throughput),
            ("lr_range_test", self.lr_range_test),
            ("lr_confirmation", self.lr_confirmation),
            ("race", self.race),
            ("lr_check", self.lr_check),
            ("ramp", self.ramp),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialBudget {
    pub fit_steps: u32,
    pub throughput_steps: u32,
    pub warmup_steps: u32,
    /// Measured steps (pairs of gradient norms) per confirmation or race run.
    pub noise_scale_measurements: u32,
    #[serde(with = "crate::units::duration_text")]
    pub deadline: Duration,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub objective: Objective,
    pub memory_headroom_fraction: f64,
    pub batch_multiple: u64,
    pub max_accumulation_steps: u32,
    pub lr_scaling: LrScaling,
    pub throughput_gain_threshold: f64,
    pub critical_batch_fraction: f64,
    pub lr_search: LrSearch,
    pub trials: TrialBudget,
    /// The fewest optimizer updates per epoch worth making: no batch
    /// larger than training samples / this is tried, raced or recommended.
    #[serde(default = "default_min_updates_per_epoch")]
    pub min_updates_per_epoch: u64,
    /// The fewest optimizer updates a whole training run should make: no
    /// batch whose real run (its time budget at the measured speed, or its
    /// epochs) makes fewer is raced or recommended.
    #[serde(default = "default_min_updates_per_run")]
    pub min_updates_per_run: u64,
    /// Most batch sizes on the throughput ladder (max-fit trials included):
    /// more points place the plateau more exactly, at a trial each.
    #[serde(default = "default_throughput_points")]
    pub throughput_points: usize,
    #[serde(default)]
    pub race: RaceSettings,
    #[serde(default)]
    pub budget_shares: BudgetShares,
}

fn default_min_updates_per_epoch() -> u64 {
    8
}

fn default_min_updates_per_run() -> u64 {
    32
}

fn default_throughput_points() -> usize {
    8
}

/// The goodput race: candidate batches trained for the same time (or
/// epochs) with several seeds and judged on validation loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaceSettings {
    /// Candidate batches in the race.
    pub candidates: u32,
    /// Seeds per candidate.
    pub seeds: u32,
    /// Extra seeds, at most, for candidates within noise of the best.
    pub extra_seeds: u32,
    /// Where the recommended cosine decay ends, as a share of the peak LR.
    pub final_lr_fraction: f64,
    /// Seeds per candidate, at most, when the budget has time beyond the
    /// plan (spare time buys seeds, which narrow the spread a verdict
    /// rests on).
    pub max_seeds: u32,
    /// How a race within noise is decided; unset: by the objective
    /// ([`TieRule::default_for`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tie_rule: Option<TieRule>,
}

impl RaceSettings {
    pub fn tie_rule(&self, objective: Objective) -> TieRule {
        self.tie_rule
            .unwrap_or_else(|| TieRule::default_for(objective))
    }
}

impl Default for RaceSettings {
    fn default() -> Self {
        RaceSettings {
            candidates: 3,
            seeds: 2,
            extra_seeds: 1,
            final_lr_fraction: 0.1,
            max_seeds: 5,
            tie_rule: None,
        }
    }
}

impl Policy {
    /// Validates a policy document already parsed into a value. `name_hint`
    /// is the file stem, used when the document does not name itself.
    pub fn from_value(value: &Value, name_hint: Option<&str>) -> Result<Policy, Vec<FieldError>> {
        let mut value = value.clone();
        if let (Some(object), Some(hint)) = (value.as_object_mut(), name_hint) {
            object
                .entry("name")
                .or_insert_with(|| Value::String(hint.to_string()));
        }
        let mut problems = Problems::new();
        let Some(policy) = deserialize_section::<Policy>(&value, "", &mut problems) else {
            return Err(problems.into_errors());
        };
        policy.check(&mut problems);
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(problems.into_errors())
        }
    }

    fn check(&self, problems: &mut Problems) {
        if !valid_name(&self.name) {
            problems.push(
                "name",
                format!(
                    "`{}` is not a usable name: use letters, digits, '-' and '_'",
                    self.name
                ),
            );
        }
        problems.in_range(
            "memory_headroom_fraction",
            self.memory_headroom_fraction,
            0.0,
            0.9,
        );
        if self.batch_multiple == 0 {
            problems.push("batch_multiple", "must be > 0, got 0");
        }
        if self.max_accumulation_steps == 0 {
            problems.push(
                "max_accumulation_steps",
                "must be > 0, got 0 (1 means no accumulation)",
            );
        }
        problems.in_range(
            "throughput_gain_threshold",
            self.throughput_gain_threshold,
            0.0,
            1.0,
        );
        if problems.in_range(
            "critical_batch_fraction",
            self.critical_batch_fraction,
            0.0,
            16.0,
        ) && self.critical_batch_fraction == 0.0
        {
            problems.push("critical_batch_fraction", "must be > 0, got 0");
        }
        let lr = &self.lr_search;
        let min_ok = problems.positive("lr_search.min_lr", lr.min_lr);
        let max_ok = problems.positive("lr_search.max_lr", lr.max_lr);
        if min_ok && max_ok && lr.max_lr <= lr.min_lr {
            problems.push(
                "lr_search.max_lr",
                format!(
                    "must be greater than lr_search.min_lr ({}), got {}",
                    lr.min_lr, lr.max_lr
                ),
            );
        }
        if lr.sweep_steps < 10 {
            problems.push(
                "lr_search.sweep_steps",
                format!(
                    "must be >= 10 for a usable range test, got {}",
                    lr.sweep_steps
                ),
            );
        }
        if lr.confirmation_candidates == 0 {
            problems.push("lr_search.confirmation_candidates", "must be > 0, got 0");
        }
        if lr.confirmation_steps == Some(0) {
            problems.push("lr_search.confirmation_steps", "must be > 0, got 0");
        }
        problems.in_range("lr_search.warmup_fraction", lr.warmup_fraction, 0.0, 0.5);
        problems.in_range(
            "lr_search.candidate_spacing",
            lr.candidate_spacing,
            1.2,
            10.0,
        );
        if lr.max_extensions > 6 {
            problems.push(
                "lr_search.max_extensions",
                format!("must be at most 6, got {}", lr.max_extensions),
            );
        }
        problems.in_range("lr_search.skip_past_rise", lr.skip_past_rise, 0.0, 100.0);
        if !(1..=5).contains(&lr.check_seeds) {
            problems.push(
                "lr_search.check_seeds",
                format!("must be in 1..=5, got {}", lr.check_seeds),
            );
        }
        let trials = &self.trials;
        if trials.fit_steps < 2 {
            problems.push(
                "trials.fit_steps",
                format!(
                    "must be >= 2 (optimizer state appears after the first step), got {}",
                    trials.fit_steps
                ),
            );
        }
        if trials.throughput_steps <= trials.warmup_steps {
            problems.push(
                "trials.throughput_steps",
                format!(
                    "must exceed trials.warmup_steps ({}) so some steps are timed, got {}",
                    trials.warmup_steps, trials.throughput_steps
                ),
            );
        }
        if !(2..=1000).contains(&trials.noise_scale_measurements) {
            problems.push(
                "trials.noise_scale_measurements",
                format!(
                    "must be in 2..=1000 (measured steps per run; 2 give an uncertainty), got {}",
                    trials.noise_scale_measurements
                ),
            );
        }
        if trials.deadline < Duration::from_secs(1) {
            problems.push("trials.deadline", "must be at least 1s");
        }
        if self.min_updates_per_epoch == 0 {
            problems.push("min_updates_per_epoch", "must be > 0, got 0");
        }
        if self.min_updates_per_run == 0 {
            problems.push("min_updates_per_run", "must be > 0, got 0");
        }
        if !(2..=16).contains(&self.throughput_points) {
            problems.push(
                "throughput_points",
                format!("must be in 2..=16, got {}", self.throughput_points),
            );
        }
        let race = &self.race;
        if !(1..=6).contains(&race.candidates) {
            problems.push(
                "race.candidates",
                format!("must be in 1..=6, got {}", race.candidates),
            );
        }
        if !(1..=5).contains(&race.seeds) {
            problems.push(
                "race.seeds",
                format!("must be in 1..=5, got {}", race.seeds),
            );
        }
        if race.extra_seeds > 4 {
            problems.push(
                "race.extra_seeds",
                format!("must be at most 4, got {}", race.extra_seeds),
            );
        }
        problems.in_range("race.final_lr_fraction", race.final_lr_fraction, 0.0, 1.0);
        if race.max_seeds < race.seeds || race.max_seeds > 8 {
            problems.push(
                "race.max_seeds",
                format!(
                    "must be in race.seeds ({})..=8, got {}",
                    race.seeds, race.max_seeds
                ),
            );
        }
        let shares = self.budget_shares.named();
        for (name, share) in shares {
            problems.in_range(&format!("budget_shares.{name}"), share, 0.0, 1.0);
        }
        let total: f64 = shares.iter().map(|(_, share)| share).sum();
        if (total - 1.0).abs() > 1e-6 {
            problems.push("budget_shares", format!("must add up to 1, got {total:.4}"));
        }
    }

    /// A one-line summary for `batchd policies`.
    pub fn summary(&self) -> String {
        format!(
            "objective {}, headroom {:.0}%, batch multiple {}, accumulation <= {}, lr scaling {}",
            self.objective,
            self.memory_headroom_fraction * 100.0,
            self.batch_multiple,
            self.max_accumulation_steps,
            self.lr_scaling,
        )
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.')
}

/// Where a policy came from, for listings and error messages.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum PolicyOrigin {
    Builtin,
    File(PathBuf),
}

#[derive(Debug, Clone)]
struct PolicyEntry {
    policy: Policy,
    /// The document as written, kept so inline overrides merge over it.
    document: Value,
    origin: PolicyOrigin,
}

/// All policies known to this process, by name.
#[derive(Debug, Clone)]
pub struct PolicySet {
    entries: BTreeMap<String, PolicyEntry>,
}

impl PolicySet {
    /// The shipped policies alone.
    pub fn builtin() -> PolicySet {
        let mut entries = BTreeMap::new();
        for (file, text) in BUILTIN {
            let document = parse_document(text, Syntax::Toml)
                .unwrap_or_else(|e| panic!("shipped policy {file} does not parse: {e}"));
            let policy = Policy::from_value(&document, None)
                .unwrap_or_else(|e| panic!("shipped policy {file} is invalid: {e:?}"));
            entries.insert(
                policy.name.clone(),
                PolicyEntry {
                    policy,
                    document,
                    origin: PolicyOrigin::Builtin,
                },
            );
        }
        PolicySet { entries }
    }

    /// The shipped policies plus every policy file in `dir` (which may be
    /// absent). Every invalid file is reported, not just the first.
    pub fn load(dir: Option<&Path>) -> Result<PolicySet, Vec<DocumentErrors>> {
        let mut set = PolicySet::builtin();
        let Some(dir) = dir else { return Ok(set) };
        if !dir.is_dir() {
            return Ok(set);
        }
        let mut failures = Vec::new();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(read) => read
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| Syntax::from_path(path).is_some())
                .collect(),
            Err(error) => {
                return Err(vec![DocumentErrors {
                    source: dir.display().to_string(),
                    errors: vec![FieldError::new("", format!("cannot read folder: {error}"))],
                }])
            }
        };
        files.sort();
        for path in files {
            match load_policy_file(&path) {
                Ok((policy, document)) => {
                    set.entries.insert(
                        policy.name.clone(),
                        PolicyEntry {
                            policy,
                            document,
                            origin: PolicyOrigin::File(path),
                        },
                    );
                }
                Err(errors) => failures.push(errors),
            }
        }
        if failures.is_empty() {
            Ok(set)
        } else {
            Err(failures)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.entries.get(name).map(|e| &e.policy)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Policy, &PolicyOrigin)> {
        self.entries.values().map(|e| (&e.policy, &e.origin))
    }

    /// The named policy with inline overrides merged over it and the result
    /// validated as a whole; errors are reported under `field_prefix`.
    pub fn resolve(
        &self,
        name: &str,
        overrides: Option<&Value>,
        field_prefix: &str,
    ) -> Result<Policy, Vec<FieldError>> {
        let entry = self.entries.get(name).ok_or_else(|| {
            let mut message = format!("unknown policy `{name}`");
            if let Some(hint) = crate::validation::did_you_mean(name, self.names()) {
                message.push_str(&format!(" (did you mean `{hint}`?)"));
            }
            message.push_str(&format!(
                "; known policies: {}",
                self.names().collect::<Vec<_>>().join(", ")
            ));
            vec![FieldError::new("policy", message)]
        })?;
        let Some(overrides) = overrides else {
            return Ok(entry.policy.clone());
        };
        if !overrides.is_object() {
            return Err(vec![FieldError::new(
                field_prefix,
                "must be a table of policy settings",
            )]);
        }
        if overrides.get("name").is_some() {
            return Err(vec![FieldError::new(
                crate::validation::join_path(field_prefix, "name"),
                "cannot be overridden; choose the policy with the top-level `policy` key",
            )]);
        }
        let mut document = entry.document.clone();
        crate::validation::merge_values(&mut document, overrides);
        Policy::from_value(&document, None).map_err(|errors| {
            errors
                .into_iter()
                .map(|e| {
                    FieldError::new(
                        crate::validation::join_path(field_prefix, &e.field),
                        e.message,
                    )
                })
                .collect()
        })
    }
}

/// Reads and validates one policy file.
pub fn load_policy_file(path: &Path) -> Result<(Policy, Value), DocumentErrors> {
    let source = path.display().to_string();
    let fail = |errors: Vec<FieldError>| DocumentErrors {
        source: source.clone(),
        errors,
    };
    let syntax = Syntax::from_path(path).ok_or_else(|| {
        fail(vec![FieldError::new(
            "",
            "unsupported file extension: use .toml, .yaml, .yml or .json",
        )])
    })?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(vec![FieldError::new("", format!("cannot read file: {e}"))]))?;
    let document = parse_document(&text, syntax).map_err(|e| fail(vec![e]))?;
    let stem = path.file_stem().and_then(|s| s.to_str());
    let policy = Policy::from_value(&document, stem).map_err(fail)?;
    Ok((policy, document))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_policies_are_valid_and_complete() {
        let set = PolicySet::builtin();
        let names: Vec<_> = set.names().collect();
        assert_eq!(
            names,
            ["balanced", "generalization", "memory-safe", "throughput"]
        );
        assert_eq!(set.get("balanced").unwrap().objective, Objective::Goodput);
        assert!(
            set.get("memory-safe").unwrap().memory_headroom_fraction
                > set.get("balanced").unwrap().memory_headroom_fraction
        );
    }

    #[test]
    fn overrides_merge_and_are_validated() {
        let set = PolicySet::builtin();
        let overrides =
            serde_json::json!({"memory_headroom_fraction": 0.2, "trials": {"fit_steps": 6}});
        let policy = set
            .resolve("balanced", Some(&overrides), "policy_overrides")
            .unwrap();
        assert_eq!(policy.memory_headroom_fraction, 0.2);
        assert_eq!(policy.trials.fit_steps, 6);
        assert_eq!(
            policy.trials.throughput_steps, 20,
            "untouched knobs keep the base value"
        );

        let bad = serde_json::json!({"memory_headroom_fraction": 1.5, "trials": {"fit_stepz": 6}});
        let errors = set
            .resolve("balanced", Some(&bad), "policy_overrides")
            .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(
                |e| e.starts_with("policy_overrides.trials.fit_stepz: unknown key")
                    && e.contains("did you mean `fit_steps`?")
            ),
            "{text:?}"
        );
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let mut document = PolicySet::builtin().entries["balanced"].document.clone();
        document["batch_multiple"] = serde_json::json!(0);
        document["lr_search"]["max_lr"] = serde_json::json!(1e-9);
        let errors = Policy::from_value(&document, None).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["batch_multiple", "lr_search.max_lr"]);
    }

    #[test]
    fn tuning_constants_are_policy_knobs_and_validated() {
        let set = PolicySet::builtin();
        // Files that predate the knobs get the values the code used.
        let defaults = Policy::from_value(
            &serde_json::json!({
                "objective": "goodput", "memory_headroom_fraction": 0.1,
                "batch_multiple": 8, "max_accumulation_steps": 8,
                "lr_scaling": "sqrt", "throughput_gain_threshold": 0.05,
                "critical_batch_fraction": 1.0,
                "lr_search": {"min_lr": 1e-6, "max_lr": 1.0, "sweep_steps": 100,
                              "confirmation_candidates": 3, "warmup_fraction": 0.05},
                "trials": {"fit_steps": 4, "throughput_steps": 20, "warmup_steps": 3,
                           "noise_scale_measurements": 40, "deadline": "5m"}
            }),
            Some("old"),
        )
        .unwrap();
        assert_eq!(defaults.lr_search.candidate_spacing, 3.16);
        assert_eq!(defaults.lr_search.max_extensions, 3);
        assert_eq!(defaults.lr_search.check_seeds, 2);
        assert_eq!(defaults.lr_search.skip_past_rise, 0.2);
        assert_eq!(defaults.race.max_seeds, 5);
        assert_eq!(defaults.min_updates_per_run, 32);
        assert_eq!(defaults.throughput_points, 8);
        assert_eq!(defaults.budget_shares, BudgetShares::default());
        let bad = serde_json::json!({
            "throughput_points": 1,
            "lr_search": {"candidate_spacing": 1.0, "check_seeds": 0, "max_extensions": 9,
                          "skip_past_rise": -0.1},
            "race": {"max_seeds": 1},
            "budget_shares": {"race": 0.9},
        });
        let errors = set
            .resolve("balanced", Some(&bad), "policy_overrides")
            .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "policy_overrides.lr_search.candidate_spacing",
                "policy_overrides.lr_search.max_extensions",
                "policy_overrides.lr_search.skip_past_rise",
                "policy_overrides.lr_search.check_seeds",
                "policy_overrides.throughput_points",
                "policy_overrides.race.max_seeds",
                "policy_overrides.budget_shares",
            ],
            "{errors:?}"
        );
        assert!(errors[6].message.contains("must add up to 1, got 1.5000"));
    }

    #[test]
    fn unknown_policy_gets_a_hint() {
        let errors = PolicySet::builtin()
            .resolve("balanse", None, "")
            .unwrap_err();
        assert!(
            errors[0].message.contains("did you mean `balanced`?"),
            "{:?}",
            errors
        );
    }
}
