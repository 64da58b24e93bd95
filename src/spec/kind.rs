//! Helpers every section's parser shares.

use serde_json::Value;

use crate::validation::{did_you_mean, join_path, Problems};

/// Reads the `kind` of a tagged section, with a hint when it is misspelt.
pub(super) fn section_kind(
    value: &Value,
    prefix: &str,
    kinds: &[&str],
    problems: &mut Problems,
) -> Option<String> {
    let Some(object) = value.as_object() else {
        problems.push(prefix, "must be a table");
        return None;
    };
    match object.get("kind") {
        None => {
            problems.push(
                join_path(prefix, "kind"),
                format!("missing; expected one of: {}", kinds.join(", ")),
            );
            None
        }
        Some(Value::String(kind)) if kinds.contains(&kind.as_str()) => Some(kind.clone()),
        Some(Value::String(kind)) => {
            let mut message = format!("unknown {prefix} kind `{kind}`");
            if let Some(hint) = did_you_mean(kind, kinds.iter().copied()) {
                message.push_str(&format!(" (did you mean `{hint}`?)"));
            }
            message.push_str(&format!("; expected one of: {}", kinds.join(", ")));
            problems.push(join_path(prefix, "kind"), message);
            None
        }
        Some(other) => {
            problems.push(
                join_path(prefix, "kind"),
                format!("must be a string, got {other}"),
            );
            None
        }
    }
}
