//! The generated OpenAPI document against the running daemon: every route
//! answers, and every real response validates against the schema the
//! document gives for its path, method, status and content type.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{daemon_with_a_tuned_job, http_with_head, Daemon, TINY};
use serde_json::{json, Value};

/// The document's schemas made strict: an object schema that lists its
/// properties refuses any other (`unevaluatedProperties`), so a field the
/// daemon writes but the document does not name fails validation. Schemas
/// used inside an `allOf` stay open (the composing schema closes them).
fn strict_components(document: &Value) -> Value {
    let mut components = document["components"].clone();
    let text = components.to_string();
    let composed: BTreeSet<String> = components["schemas"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|s| s.get("allOf"))
        .flat_map(|all| all.as_array().cloned().unwrap_or_default())
        .filter_map(|s| s.get("$ref").and_then(|r| r.as_str()).map(str::to_string))
        .collect();
    assert!(text.contains("#/components/schemas/"));
    for (name, schema) in components["schemas"].as_object_mut().unwrap() {
        let reference = format!("#/components/schemas/{name}");
        if schema.get("properties").is_some() && !composed.contains(&reference) {
            schema["unevaluatedProperties"] = json!(false);
        }
        if let Some(all) = schema.get("allOf").and_then(|a| a.as_array()).cloned() {
            if all.iter().any(|s| s.get("$ref").is_some()) {
                schema["unevaluatedProperties"] = json!(false);
            }
        }
    }
    components
}

struct Checker {
    document: Value,
    components: Value,
    checked: BTreeSet<(String, String, u16)>,
}

impl Checker {
    fn new(document: Value) -> Checker {
        let components = strict_components(&document);
        Checker {
            document,
            components,
            checked: BTreeSet::new(),
        }
    }

    /// Sends a request, finds what the document says about its answer and
    /// validates the body against it.
    #[allow(clippy::too_many_arguments)]
    fn check(
        &mut self,
        daemon: &Daemon,
        method: &str,
        template: &str,
        path: &str,
        content_type: &str,
        body: &str,
        expected: u16,
    ) -> Value {
        let (status, headers, text) =
            http_with_head(daemon.port, method, path, content_type, body, None);
        assert_eq!(status, expected, "{method} {path}: {text}");
        let operation = &self.document["paths"][template][method.to_ascii_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {template} is not documented"
        );
        let response = &operation["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {template} answered {status}, which the document does not list"
        );
        self.checked
            .insert((method.to_string(), template.to_string(), status));
        let received = headers
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-type")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        let Some(content) = response.get("content").and_then(|c| c.as_object()) else {
            assert!(text.is_empty(), "{method} {path}: undocumented body {text}");
            return Value::Null;
        };
        let essence = received.split(';').next().unwrap_or("").trim();
        let Some(media) = content.get(essence) else {
            panic!(
                "{method} {path} {status}: content type `{received}` not among {:?}",
                content.keys().collect::<Vec<_>>()
            );
        };
        if !essence.ends_with("json") {
            return Value::Null;
        }
        let instance: Value = serde_json::from_str(&text).expect("a JSON body");
        let errors = self.errors(&media["schema"], &instance);
        assert!(
            errors.is_empty(),
            "{method} {path} {status} does not match the document:\n{}",
            errors.join("\n")
        );
        instance
    }
}

impl Checker {
    /// Where `instance` breaks `schema` (resolved in the strict components).
    fn errors(&self, schema: &Value, instance: &Value) -> Vec<String> {
        let mut schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.components,
            "allOf": [schema],
        });
        if schema["allOf"][0].get("$ref").is_some() {
            // Closes a schema the strict components left open for its use
            // inside an `allOf` (a plain `Job`) when it is the answer itself;
            // a free-form `Object` (this document) stays open.
            schema["unevaluatedProperties"] = json!(false);
        }
        let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
        validator
            .iter_errors(instance)
            .take(10)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect()
    }
}

#[test]
fn real_responses_validate_against_the_generated_document() {
    let root = tempfile::tempdir().unwrap();
    let daemon = daemon_with_a_tuned_job(root.path(), &[]);
    let (status, document) = daemon.json("/openapi.json");
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.1.0");
    let mut c = Checker::new(document.clone());

    c.check(
        &daemon,
        "GET",
        "/openapi.json",
        "/openapi.json",
        "",
        "",
        200,
    );
    c.check(&daemon, "GET", "/healthz", "/healthz", "", "", 200);
    c.check(&daemon, "GET", "/readyz", "/readyz", "", "", 200);
    c.check(&daemon, "GET", "/v1/gpus", "/v1/gpus", "", "", 200);
    c.check(&daemon, "GET", "/metrics", "/metrics", "", "", 200);
    c.check(&daemon, "GET", "/", "/", "", "", 200);
    c.check(&daemon, "GET", "/jobs/{name}", "/jobs/tiny", "", "", 200);
    c.check(&daemon, "GET", "/jobs/{name}", "/jobs/nope", "", "", 404);

    let list = c.check(&daemon, "GET", "/v1/jobs", "/v1/jobs", "", "", 200);
    let tiny = &list["jobs"][0];
    assert_eq!(tiny["name"], "tiny");
    assert!(tiny["batch_size"].as_u64().is_some() && tiny["learning_rate"].is_number());
    let job = c.check(
        &daemon,
        "GET",
        "/v1/jobs/{name}",
        "/v1/jobs/tiny",
        "",
        "",
        200,
    );
    assert!(job["history"].as_array().is_some_and(|h| !h.is_empty()));
    c.check(
        &daemon,
        "GET",
        "/v1/jobs/{name}",
        "/v1/jobs/nope",
        "",
        "",
        404,
    );

    let recommendation = "/v1/jobs/{name}/recommendation";
    let summary = c.check(
        &daemon,
        "GET",
        recommendation,
        "/v1/jobs/tiny/recommendation",
        "",
        "",
        200,
    );
    let full = c.check(
        &daemon,
        "GET",
        recommendation,
        "/v1/jobs/tiny/recommendation?evidence=full",
        "",
        "",
        200,
    );
    assert_eq!(summary["batch_size"], full["batch_size"]);
    let lr = c.check(
        &daemon,
        "GET",
        recommendation,
        "/v1/jobs/tiny/recommendation?batch_size=128",
        "",
        "",
        200,
    );
    assert!(lr["learning_rate"].as_f64().is_some_and(|x| x > 0.0));
    for bad in ["?batch_size=0", "?batch_size=x", "?evidence=everything"] {
        let problem = c.check(
            &daemon,
            "GET",
            recommendation,
            &format!("/v1/jobs/tiny/recommendation{bad}"),
            "",
            "",
            400,
        );
        assert!(problem["detail"]
            .as_str()
            .unwrap()
            .contains(&bad[1..bad.find('=').unwrap()]));
    }
    c.check(
        &daemon,
        "GET",
        recommendation,
        "/v1/jobs/nope/recommendation",
        "",
        "",
        404,
    );
    // The validation can fail: a wrong type, a field the document does not
    // name (at the top and deep inside), a missing required one.
    let schema = json!({"$ref": "#/components/schemas/Recommendation"});
    assert!(c.errors(&schema, &full).is_empty());
    let mut tampered = full.clone();
    tampered["batch_size"] = json!("many");
    assert!(!c.errors(&schema, &tampered).is_empty());
    let mut tampered = full.clone();
    tampered["surprise"] = json!(1);
    assert!(!c.errors(&schema, &tampered).is_empty());
    let mut tampered = full.clone();
    tampered["memory"]["max_fit"]["surprise"] = json!(1);
    assert!(!c.errors(&schema, &tampered).is_empty());
    let mut tampered = full.clone();
    tampered["lr"].as_object_mut().unwrap().remove("rule");
    assert!(!c.errors(&schema, &tampered).is_empty());
    let mut tampered = list.clone();
    tampered["jobs"][0]["surprise"] = json!(1);
    assert!(!c
        .errors(&json!({"$ref": "#/components/schemas/JobList"}), &tampered)
        .is_empty());

    // Writes: submit (201, 409, 415, 422), retune, delete.
    let spec = TINY.replace("[model]", "name = \"posted\"\n[model]");
    let posted = c.check(
        &daemon,
        "POST",
        "/v1/jobs",
        "/v1/jobs",
        "application/toml",
        &spec,
        201,
    );
    assert_eq!(posted["name"], "posted");
    // A plain Job is closed too: an unnamed field fails.
    let mut tampered = posted.clone();
    tampered["surprise"] = json!(1);
    assert!(!c
        .errors(&json!({"$ref": "#/components/schemas/Job"}), &tampered)
        .is_empty());
    c.check(
        &daemon,
        "POST",
        "/v1/jobs",
        "/v1/jobs",
        "application/toml",
        &spec,
        409,
    );
    c.check(
        &daemon,
        "POST",
        "/v1/jobs",
        "/v1/jobs",
        "text/plain",
        &spec,
        415,
    );
    let invalid = c.check(
        &daemon,
        "POST",
        "/v1/jobs",
        "/v1/jobs",
        "application/toml",
        "name = \"bad\"\n[model]\nkind = \"mlp\"\ninput_size = 0\n",
        422,
    );
    assert!(!invalid["errors"].as_array().unwrap().is_empty());
    c.check(
        &daemon,
        "POST",
        "/v1/jobs/{name}/retune",
        "/v1/jobs/posted/retune",
        "",
        "",
        202,
    );
    c.check(
        &daemon,
        "POST",
        "/v1/jobs/{name}/retune",
        "/v1/jobs/nope/retune",
        "",
        "",
        404,
    );
    c.check(
        &daemon,
        "DELETE",
        "/v1/jobs/{name}",
        "/v1/jobs/posted",
        "",
        "",
        204,
    );
    c.check(
        &daemon,
        "DELETE",
        "/v1/jobs/{name}",
        "/v1/jobs/nope",
        "",
        "",
        404,
    );

    // Every operation of the document was exercised with a success.
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            assert!(
                c.checked
                    .iter()
                    .any(|(m, p, s)| m == &method && p == path && *s < 300),
                "{method} {path} was never answered with a success"
            );
        }
    }
}

#[test]
fn the_default_recommendation_and_its_state_file_stay_under_100_kb() {
    let root = tempfile::tempdir().unwrap();
    let daemon = daemon_with_a_tuned_job(root.path(), &[]);
    let (_, summary) = daemon.get("/v1/jobs/tiny/recommendation");
    let (_, full) = daemon.get("/v1/jobs/tiny/recommendation?evidence=full");
    assert!(summary.len() < 100_000, "summary {} bytes", summary.len());
    assert!(full.len() < 100_000, "full {} bytes", full.len());
    assert!(summary.len() < full.len());
    let stored = std::fs::read_dir(root.path().join("state/recommendations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a stored recommendation");
    let size = std::fs::metadata(&stored).unwrap().len();
    assert!(size < 100_000, "{}: {size} bytes", stored.display());
    let full: Value = serde_json::from_str(&full).unwrap();
    for run in full["evidence"]["lr_confirmations"].as_array().unwrap() {
        assert!(run["losses"].as_array().unwrap().len() <= 100);
    }
}

/// The router is built only from documented routes: `api.rs` registers
/// handlers through `routes!` (which adds each to the document), never
/// with axum's plain `.route(`, so no route can be missing from it.
#[test]
fn every_route_of_the_router_is_in_the_document() {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/daemon/api.rs"))
            .unwrap();
    let code: String = source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!code.contains(".route("), "a route outside routes!()");
    assert!(
        !code.contains(".nest("),
        "a nested router outside routes!()"
    );
    assert!(
        !code.contains(".merge("),
        "a merged router outside routes!()"
    );
    let registered: Vec<&str> = code
        .match_indices(".routes(routes!(")
        .map(|(i, _)| {
            let rest = &code[i + ".routes(routes!(".len()..];
            &rest[..rest.find(')').unwrap()]
        })
        .collect();
    let handlers: Vec<&str> = registered
        .iter()
        .flat_map(|list| list.split(',').map(str::trim))
        .filter(|h| !h.is_empty())
        .collect();
    // Each handler registered carries its operation.
    for handler in &handlers {
        let at = code
            .find(&format!("async fn {handler}("))
            .unwrap_or_else(|| panic!("no handler {handler}"));
        let before = &code[..at];
        let attribute = before.rfind("#[utoipa::path(").unwrap();
        assert!(
            !before[attribute..].contains("\nasync fn "),
            "{handler} has no #[utoipa::path]"
        );
    }
    // And the running daemon's document has one operation per handler.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("jobs")).unwrap();
    let daemon = Daemon::start(&root.path().join("jobs"), &root.path().join("state"), 0);
    let (_, document) = daemon.json("/openapi.json");
    let operations: usize = document["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(operations, handlers.len(), "{handlers:?}");
    // A path it does not list is the problem+json 404 that points to it.
    let (status, body) = daemon.get("/v1/nowhere");
    assert_eq!(status, 404);
    assert!(body.contains("/openapi.json"));
}
