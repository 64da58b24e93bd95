//! Shared machinery for turning user-written documents (job specs, policies,
//! the daemon configuration) into validated values with precise errors.
//!
//! Every document goes through the same steps: the file's syntax (TOML, YAML or
//! JSON) becomes a generic [`Value`]; each section is deserialized on its own
//! with `deny_unknown_fields`, so one bad section does not hide the errors of
//! another; semantic checks then collect every problem they find. Errors carry
//! the dotted field path (`model.hidden[1]`) so a user can find the spot.

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// One problem in a document, located by its field path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Dotted path such as `model.hidden[1]`; empty for whole-document errors.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// All the problems found in one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocumentErrors {
    /// The file the document came from, or a label such as `<request body>`.
    pub source: String,
    pub errors: Vec<FieldError>,
}

// Not derived with thiserror: it would take the `source` field for an error cause.
impl std::error::Error for DocumentErrors {}

impl fmt::Display for DocumentErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {}", self.source, error)?;
        }
        Ok(())
    }
}

/// The most errors kept for one document: a file of a million junk keys
/// must not become a million stored errors (the rest are counted).
pub const MAX_ERRORS_KEPT: usize = 50;

/// The deepest nesting of arrays, tables and dotted keys a document may
/// have. Checked on the text before parsing: parsers take time (and stack)
/// that grows faster than the depth, and no job spec needs more than a few.
pub const MAX_NESTING: usize = 32;

/// Collects field errors under a path prefix while a document is checked.
#[derive(Debug, Default)]
pub struct Problems {
    errors: Vec<FieldError>,
    /// Errors past [`MAX_ERRORS_KEPT`], counted but not kept.
    dropped: usize,
}

impl Problems {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.extend([FieldError::new(field, message)]);
    }

    pub fn extend(&mut self, errors: impl IntoIterator<Item = FieldError>) {
        for error in errors {
            if self.errors.len() < MAX_ERRORS_KEPT {
                self.errors.push(error);
            } else {
                self.dropped += 1;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Errors found, kept or not.
    pub fn len(&self) -> usize {
        self.errors.len() + self.dropped
    }

    /// The kept errors, and one more that counts those left out.
    pub fn into_errors(mut self) -> Vec<FieldError> {
        if self.dropped > 0 {
            self.errors.push(FieldError::new(
                "",
                format!(
                    "{} more errors not shown (only the first {MAX_ERRORS_KEPT} are kept)",
                    self.dropped
                ),
            ));
        }
        self.errors
    }

    /// Finishes a document: `Ok(value)` when nothing was found.
    pub fn finish<T>(self, source: &str, value: T) -> Result<T, DocumentErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(DocumentErrors {
                source: source.to_string(),
                errors: self.into_errors(),
            })
        }
    }

    /// Checks that an integer field is at least `min`, returning it as `u64`.
    pub fn at_least(&mut self, field: &str, value: i64, min: i64) -> Option<u64> {
        if value < min {
            let bound = if min == 1 {
                "must be > 0".to_string()
            } else {
                format!("must be >= {min}")
            };
            self.push(field, format!("{bound}, got {value}"));
            None
        } else {
            Some(value as u64)
        }
    }

    /// Checks that a float is finite and inside `[min, max]`.
    pub fn in_range(&mut self, field: &str, value: f64, min: f64, max: f64) -> bool {
        if !value.is_finite() || value < min || value > max {
            self.push(
                field,
                format!("must be between {min} and {max}, got {value}"),
            );
            false
        } else {
            true
        }
    }

    /// Checks that a float is finite and strictly positive.
    pub fn positive(&mut self, field: &str, value: f64) -> bool {
        if !value.is_finite() || value <= 0.0 {
            self.push(field, format!("must be > 0, got {value}"));
            false
        } else {
            true
        }
    }
}

/// The syntax a document is written in, chosen by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Toml,
    Yaml,
    Json,
}

impl Syntax {
    /// `.toml`, `.yaml`/`.yml` and `.json`; anything else is not a document.
    pub fn from_path(path: &Path) -> Option<Syntax> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "toml" => Some(Syntax::Toml),
            "yaml" | "yml" => Some(Syntax::Yaml),
            "json" => Some(Syntax::Json),
            _ => None,
        }
    }

    /// The file extension a document of this syntax is stored under.
    pub fn extension(self) -> &'static str {
        match self {
            Syntax::Toml => "toml",
            Syntax::Yaml => "yaml",
            Syntax::Json => "json",
        }
    }
}

/// Parses document text into a generic value; a syntax error is reported
/// with its line and column, because half-written files end up here.
pub fn parse_document(text: &str, syntax: Syntax) -> Result<Value, FieldError> {
    let depth = nesting_depth(text, syntax);
    if depth > MAX_NESTING {
        return Err(FieldError::new(
            "",
            format!("the document nests {depth} levels deep; at most {MAX_NESTING} are accepted"),
        ));
    }
    match syntax {
        Syntax::Toml => {
            let table: toml::Table = toml::from_str(text).map_err(|e| {
                let location = e
                    .span()
                    .map(|span| {
                        let (line, column) = line_column(text, span.start);
                        format!(" at line {line}, column {column}")
                    })
                    .unwrap_or_default();
                FieldError::new(
                    "",
                    format!("TOML syntax error{location}: {}", e.message().trim()),
                )
            })?;
            // JSON has no NaN or infinity: converted, they would become
            // null and read as "unset", so a NaN limit meant no limit.
            let table = toml::Value::Table(table);
            if let Some(field) = first_non_finite_toml(&table, "") {
                return Err(non_finite(field));
            }
            serde_json::to_value(table)
                .map_err(|e| FieldError::new("", format!("unsupported TOML value: {e}")))
        }
        Syntax::Yaml => {
            let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
                .map_err(|e| FieldError::new("", format!("YAML syntax error: {e}")))?;
            if let Some(field) = first_non_finite_yaml(&value, "") {
                return Err(non_finite(field));
            }
            serde_json::to_value(value)
                .map_err(|e| FieldError::new("", format!("unsupported YAML value: {e}")))
        }
        Syntax::Json => serde_json::from_str(text)
            .map_err(|e| FieldError::new("", format!("JSON syntax error: {e}"))),
    }
}

fn non_finite(field: String) -> FieldError {
    FieldError::new(field, "must be a finite number, got NaN or infinity")
}

/// The path of the first NaN or infinite float in a TOML value.
fn first_non_finite_toml(value: &toml::Value, path: &str) -> Option<String> {
    match value {
        toml::Value::Float(f) if !f.is_finite() => Some(path.to_string()),
        toml::Value::Table(table) => table
            .iter()
            .find_map(|(key, v)| first_non_finite_toml(v, &join_path(path, key))),
        toml::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| first_non_finite_toml(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// The path of the first NaN or infinite float in a YAML value.
fn first_non_finite_yaml(value: &serde_yaml_ng::Value, path: &str) -> Option<String> {
    use serde_yaml_ng::Value as Y;
    match value {
        Y::Number(n) if n.as_f64().is_some_and(|f| !f.is_finite()) => Some(path.to_string()),
        Y::Mapping(map) => map.iter().find_map(|(key, v)| {
            let key = key
                .as_str()
                .map_or_else(|| format!("{key:?}"), str::to_string);
            first_non_finite_yaml(v, &join_path(path, &key))
        }),
        Y::Sequence(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| first_non_finite_yaml(v, &format!("{path}[{i}]"))),
        Y::Tagged(tagged) => first_non_finite_yaml(&tagged.value, path),
        _ => None,
    }
}

/// How deep `text` nests: open brackets and braces outside strings and
/// comments, plus (in TOML) the dots of a line's dotted key or table
/// header, each of which opens a table. An over-estimate at worst (a
/// bracket in a YAML plain scalar counts), which only matters past
/// [`MAX_NESTING`]. YAML block nesting needs a space of indentation per
/// level, so the size limit bounds it.
fn nesting_depth(text: &str, syntax: Syntax) -> usize {
    let mut deepest = 0;
    let mut depth: usize = 0;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut comment = false;
    // TOML: dots seen in the key part of the current line.
    let mut key_dots = 0;
    let mut in_key = true;
    // A line inside a multi-line array holds values, not keys.
    let mut line_starts_at_top = true;
    for c in text.chars() {
        if c == '\n' {
            comment = false;
            key_dots = 0;
            in_key = true;
            line_starts_at_top = depth == 0;
            if syntax != Syntax::Json && quote != Some('"') {
                quote = None;
            }
            continue;
        }
        if comment {
            continue;
        }
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q == '"' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' if syntax != Syntax::Json || c == '"' => quote = Some(c),
            '#' if syntax != Syntax::Json => comment = true,
            '[' | '{' => depth += 1,
            ']' | '}' => depth = depth.saturating_sub(1),
            '.' if syntax == Syntax::Toml && in_key && line_starts_at_top => key_dots += 1,
            '=' => in_key = false,
            _ => {}
        }
        deepest = deepest.max(depth + key_dots);
    }
    deepest
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Joins a path prefix and a child path: `("model", "hidden[1]")` gives
/// `model.hidden[1]`.
pub fn join_path(prefix: &str, child: &str) -> String {
    match (prefix.is_empty(), child.is_empty() || child == ".") {
        (true, _) => child.trim_start_matches('.').to_string(),
        (false, true) => prefix.to_string(),
        (false, false) if child.starts_with('[') => format!("{prefix}{child}"),
        (false, false) => format!("{prefix}.{child}"),
    }
}

/// Deserializes one section of a document, recording errors under `prefix`.
///
/// Serde stops at the first error. So that a user sees every misspelt key at
/// once, each unknown key is recorded, removed, and deserialization retried;
/// the first error of any other kind ends the section.
pub fn deserialize_section<T: DeserializeOwned>(
    value: &Value,
    prefix: &str,
    problems: &mut Problems,
) -> Option<T> {
    let mut value = value.clone();
    // Bounded so a pathological document cannot spin here.
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(parsed) => return Some(parsed),
            Err(error) => {
                let path = match error.path().to_string() {
                    root if root == "." => String::new(),
                    path => path,
                };
                let message = error.inner().to_string();
                if let Some(unknown) = unknown_name(&message, "unknown field") {
                    // The path of an unknown-field error is the key itself.
                    let parent = parent_path(&path, &unknown);
                    problems.push(
                        join_path(prefix, &path),
                        describe_unknown("key", &unknown, &message),
                    );
                    if remove_key(&mut value, &parent, &unknown) {
                        continue;
                    }
                    return None;
                }
                if let Some(missing) = unknown_name(&message, "missing field") {
                    problems.push(join_path(prefix, &join_path(&path, &missing)), "missing");
                    return None;
                }
                let message = match unknown_name(&message, "unknown variant") {
                    Some(variant) => describe_unknown("value", &variant, &message),
                    None => friendlier(&message),
                };
                problems.push(join_path(prefix, &path), message);
                return None;
            }
        }
    }
    None
}

/// Extracts `x` from messages like "unknown field `x`, expected ...".
fn unknown_name(message: &str, lead: &str) -> Option<String> {
    let rest = message.strip_prefix(lead)?.trim_start();
    let rest = rest.strip_prefix('`')?;
    let end = rest.find('`')?;
    Some(rest[..end].to_string())
}

/// The names serde lists after "expected one of".
fn expected_names(message: &str) -> Vec<String> {
    let Some(index) = message.find("expected") else {
        return Vec::new();
    };
    message[index..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn describe_unknown(what: &str, name: &str, message: &str) -> String {
    let expected = expected_names(message);
    let mut text = format!("unknown {what} `{name}`");
    if let Some(hint) = did_you_mean(name, expected.iter().map(String::as_str)) {
        text.push_str(&format!(" (did you mean `{hint}`?)"));
    }
    if expected.is_empty() {
        text.push_str("; this table takes no keys");
    } else {
        text.push_str(&format!("; expected one of: {}", expected.join(", ")));
    }
    text
}

/// The closest candidate to a misspelt name, when it is close enough to be a
/// plausible typo rather than a different word.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lowered = name.to_ascii_lowercase();
    // Edit distance catches transpositions in short words (`mpl`), the
    // Jaro-Winkler score catches longer words with a shared stem.
    candidates
        .into_iter()
        .filter_map(|candidate| {
            let edits = strsim::damerau_levenshtein(&lowered, candidate);
            let similar = strsim::jaro_winkler(&lowered, candidate);
            let close =
                (edits <= 2 && edits < lowered.len().min(candidate.len())) || similar >= 0.85;
            close.then_some((edits, candidate))
        })
        .min_by_key(|(edits, _)| *edits)
        .map(|(_, candidate)| candidate)
}

/// Rewrites serde's type-mismatch wording into something a spec author reads
/// at a glance ("expected u64" means nothing to most users).
fn friendlier(message: &str) -> String {
    message
        .replace("expected u64", "expected a non-negative whole number")
        .replace("expected i64", "expected a whole number")
        .replace("expected u32", "expected a non-negative whole number")
        .replace("expected usize", "expected a non-negative whole number")
        .replace("expected f64", "expected a number")
        .replace("expected a borrowed string", "expected a string")
}

fn parent_path(path: &str, key: &str) -> String {
    path.strip_suffix(key)
        .map(|p| p.trim_end_matches('.').to_string())
        .unwrap_or_default()
}

/// Removes `key` from the object at the dotted `path` inside `value`.
fn remove_key(value: &mut Value, path: &str, key: &str) -> bool {
    let mut cursor = value;
    if !path.is_empty() && path != "." {
        for segment in split_path(path) {
            cursor = match segment {
                PathSegment::Key(k) => match cursor.get_mut(&k) {
                    Some(v) => v,
                    None => return false,
                },
                PathSegment::Index(i) => match cursor.get_mut(i) {
                    Some(v) => v,
                    None => return false,
                },
            };
        }
    }
    cursor
        .as_object_mut()
        .map(|object| object.remove(key).is_some())
        .unwrap_or(false)
}

enum PathSegment {
    Key(String),
    Index(usize),
}

fn split_path(path: &str) -> Vec<PathSegment> {
    let mut segments = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(bracket) = rest.find('[') {
            if bracket > 0 {
                segments.push(PathSegment::Key(rest[..bracket].to_string()));
            }
            rest = &rest[bracket..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let end = stripped.find(']').unwrap_or(stripped.len());
                if let Ok(index) = stripped[..end].parse() {
                    segments.push(PathSegment::Index(index));
                }
                rest = stripped.get(end + 1..).unwrap_or("");
            }
        } else if !rest.is_empty() {
            segments.push(PathSegment::Key(rest.to_string()));
        }
    }
    segments
}

/// Checks a document's top-level keys against the known ones, recording a
/// "did you mean" error for each stranger, and returns the object.
pub fn top_level<'a>(
    value: &'a Value,
    known: &[&str],
    problems: &mut Problems,
) -> Option<&'a serde_json::Map<String, Value>> {
    let Some(object) = value.as_object() else {
        problems.push(
            "",
            "the document must be a table of keys (got a list or a scalar)",
        );
        return None;
    };
    for key in object.keys() {
        if !known.contains(&key.as_str()) {
            let mut message = format!("unknown key `{key}`");
            if let Some(hint) = did_you_mean(key, known.iter().copied()) {
                message.push_str(&format!(" (did you mean `{hint}`?)"));
            }
            message.push_str(&format!("; expected one of: {}", known.join(", ")));
            problems.push(key.clone(), message);
        }
    }
    Some(object)
}

/// Deep-merges `overlay` into `base`: tables merge key by key, anything else
/// is replaced. Used for inline policy overrides.
pub fn merge_values(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(key) {
                    Some(existing) => merge_values(existing, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, overlay) => *base = overlay.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        hidden: Vec<u64>,
        classes: u64,
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!("a: {}{}", "[".repeat(60_000), "]".repeat(60_000));
        let started = std::time::Instant::now();
        let error = parse_document(&deep, Syntax::Yaml).unwrap_err();
        assert!(error.message.contains("60000 levels"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let json = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        assert!(parse_document(&json, Syntax::Json).is_err());
        let dotted = format!("{} = 1", vec!["a"; 40].join("."));
        assert!(parse_document(&dotted, Syntax::Toml).is_err());
        // Brackets in strings and comments, floats in multi-line arrays and
        // ordinary dotted keys are no nesting.
        let fine = "name = \"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\" # [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n\
                    model.kind = \"mlp\"\nx = [\n  0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6, 2.7, 2.8, 2.9, 3.1, 3.2, 3.3, 3.4, 3.5, 3.6,\n]\n[a.b.c]\nd = 1\n";
        assert!(parse_document(fine, Syntax::Toml).is_ok());
        assert_eq!(nesting_depth(fine, Syntax::Toml), 3);
        assert_eq!(
            nesting_depth("{\"a\": \"[[[[\", \"b\": [[1]]}", Syntax::Json),
            3
        );
    }

    #[test]
    fn non_finite_numbers_are_errors_naming_their_field() {
        let error = parse_document("[search]\nmemory_limit = nan\n", Syntax::Toml).unwrap_err();
        assert_eq!(error.field, "search.memory_limit");
        assert!(error.message.contains("finite"), "{error}");
        let error = parse_document("[optimizer]\nbetas = [0.9, inf]\n", Syntax::Toml).unwrap_err();
        assert_eq!(error.field, "optimizer.betas[1]");
        let error = parse_document("optimizer:\n  weight_decay: .nan\n", Syntax::Yaml).unwrap_err();
        assert_eq!(error.field, "optimizer.weight_decay");
        assert!(parse_document("a:\n  b: 1.5\n", Syntax::Yaml).is_ok());
    }

    #[test]
    fn errors_past_the_cap_are_counted_not_kept() {
        let mut problems = Problems::new();
        for i in 0..10_000 {
            problems.push(format!("junk{i}"), "unknown field");
        }
        assert_eq!(problems.len(), 10_000);
        let errors = problems.into_errors();
        assert_eq!(errors.len(), MAX_ERRORS_KEPT + 1);
        assert!(errors[MAX_ERRORS_KEPT]
            .message
            .contains(&format!("{} more errors", 10_000 - MAX_ERRORS_KEPT)));
    }

    #[test]
    fn every_unknown_key_is_reported_with_a_hint() {
        let value = serde_json::json!({"hiden": [1], "clases": 3, "hidden": [2], "classes": 4});
        let mut problems = Problems::new();
        let parsed: Option<Inner> = deserialize_section(&value, "model", &mut problems);
        assert!(parsed.is_some());
        let mut errors = problems.into_errors();
        errors.sort_by(|a, b| a.field.cmp(&b.field));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].field, "model.clases");
        assert!(
            errors[0].message.contains("did you mean `classes`?"),
            "{}",
            errors[0]
        );
        assert_eq!(errors[1].field, "model.hiden");
        assert!(errors[1].message.contains("did you mean `hidden`?"));
    }

    #[test]
    fn type_errors_name_the_element() {
        let value = serde_json::json!({"hidden": [1, "x"], "classes": 3});
        let mut problems = Problems::new();
        let parsed: Option<Inner> = deserialize_section(&value, "model", &mut problems);
        assert!(parsed.is_none());
        let errors = problems.into_errors();
        assert_eq!(errors[0].field, "model.hidden[1]");
        assert!(
            errors[0].message.contains("non-negative whole number"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn toml_syntax_errors_carry_line_and_column() {
        let error = parse_document("name = \"a\"\nmodel = [\n", Syntax::Toml).unwrap_err();
        assert!(
            error.message.contains("line 2") || error.message.contains("line 3"),
            "{error}"
        );
    }

    #[test]
    fn hints_only_for_close_names() {
        assert_eq!(
            did_you_mean("optimiser", ["optimizer", "model"]),
            Some("optimizer")
        );
        assert_eq!(did_you_mean("zebra", ["optimizer", "model"]), None);
    }

    #[test]
    fn merge_overrides_nested_tables() {
        let mut base = serde_json::json!({"a": 1, "t": {"x": 1, "y": 2}});
        merge_values(&mut base, &serde_json::json!({"t": {"y": 3}}));
        assert_eq!(base, serde_json::json!({"a": 1, "t": {"x": 1, "y": 3}}));
    }

    #[test]
    fn join_paths() {
        assert_eq!(join_path("model", "hidden[1]"), "model.hidden[1]");
        assert_eq!(join_path("model", "."), "model");
        assert_eq!(join_path("", "x"), "x");
        assert_eq!(join_path("model.hidden", "[1]"), "model.hidden[1]");
    }
}
