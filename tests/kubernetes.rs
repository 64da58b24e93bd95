//! The Kubernetes manifests (`deploy/kubernetes/`) and the `Containerfile`,
//! checked offline: nothing here reaches a cluster or builds an image.
//!
//! - Every manifest validates against the Kubernetes API schemas with the
//!   `kubernetes-validate` package (PyPI), in strict mode (unknown fields
//!   are errors). The program is `$BATCHD_KUBERNETES_VALIDATE`, else
//!   `kubernetes-validate` on `PATH`; without it the test says "skipped",
//!   except under CI, where `.ci/run` installs it.
//! - The ServiceMonitor, a Prometheus Operator kind those schemas lack, is
//!   checked against the fields the operator's CRD defines for what it uses.
//! - What ties the pieces together is checked here: the daemon's own
//!   configuration parser accepts the ConfigMap's `batchd.toml`, the jobs
//!   ConfigMap's specs are valid specs, the probes hit the daemon's health
//!   endpoints on the port it listens on, the hardening is there, and the
//!   image runs as the user the pods run as.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// Every YAML document of a file, as JSON values.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            let value = serde_yaml_ng::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
            serde_json::to_value(value).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// The resources the kustomization lists, read from their files.
fn resources() -> Vec<(PathBuf, Value)> {
    let kustomization = documents(&deploy().join("kustomization.yaml")).remove(0);
    assert_eq!(kustomization["kind"], "Kustomization");
    assert_eq!(kustomization["namespace"], "batchd");
    kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|file| {
            let path = deploy().join(file.as_str().unwrap());
            documents(&path).into_iter().map(move |d| (path.clone(), d))
        })
        .collect()
}

fn of_kind<'a>(resources: &'a [(PathBuf, Value)], kind: &str) -> &'a Value {
    &resources
        .iter()
        .find(|(_, r)| r["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} among the manifests"))
        .1
}

/// The `kubernetes-validate` program, or `None` (a skip) outside CI.
fn validator() -> Option<PathBuf> {
    let candidate = std::env::var_os("BATCHD_KUBERNETES_VALIDATE")
        .map_or_else(|| PathBuf::from("kubernetes-validate"), PathBuf::from);
    let works = Command::new(&candidate)
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Some(candidate);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "no kubernetes-validate (CI installs it; see .ci/run)"
    );
    eprintln!("skipped: no kubernetes-validate (pip install kubernetes-validate, or set BATCHD_KUBERNETES_VALIDATE)");
    None
}

#[test]
fn every_manifest_validates_against_the_kubernetes_api_schemas() {
    let Some(program) = validator() else { return };
    let files: Vec<PathBuf> = {
        let mut files: Vec<PathBuf> = resources().into_iter().map(|(p, _)| p).collect();
        files.dedup();
        files
    };
    assert!(files.len() >= 7, "{files:?}");
    let output = Command::new(&program)
        .args(["--strict", "--kubernetes-version", "1.32"])
        .args(&files)
        .output()
        .expect("kubernetes-validate runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{report}");
    // It validated each file (rather than skipping what it did not know).
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        assert!(
            report
                .lines()
                .any(|l| l.contains(&*name) && l.contains(" passed for resource ")),
            "{name}: {report}"
        );
    }
    // And it does fail a manifest that is wrong: an unknown field.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(deploy().join("service.yaml"))
        .unwrap()
        .replace("  selector:", "  selektor:");
    std::fs::write(&broken, text).unwrap();
    let output = Command::new(&program)
        .args(["--strict", "--kubernetes-version", "1.32"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!output.status.success(), "a misspelt field passed");
}

#[test]
fn the_service_monitor_uses_only_fields_the_operator_defines() {
    let monitor = documents(&deploy().join("prometheus-operator/servicemonitor.yaml")).remove(0);
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "ServiceMonitor");
    // The fields of monitoring.coreos.com/v1 ServiceMonitor used here, as
    // the operator's CRD defines them (spec.endpoints[] is an Endpoint).
    let spec_fields = [
        "selector",
        "namespaceSelector",
        "endpoints",
        "jobLabel",
        "targetLabels",
        "podTargetLabels",
        "sampleLimit",
    ];
    let endpoint_fields = [
        "port",
        "path",
        "interval",
        "scrapeTimeout",
        "relabelings",
        "metricRelabelings",
        "scheme",
        "honorLabels",
    ];
    for key in monitor["spec"].as_object().unwrap().keys() {
        assert!(spec_fields.contains(&key.as_str()), "spec.{key}");
    }
    let resources = resources();
    let service = of_kind(&resources, "Service");
    for endpoint in monitor["spec"]["endpoints"].as_array().unwrap() {
        for key in endpoint.as_object().unwrap().keys() {
            assert!(endpoint_fields.contains(&key.as_str()), "endpoints[].{key}");
        }
        // It scrapes the Service's named port, at the daemon's /metrics.
        assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
        assert_eq!(endpoint["path"], "/metrics");
        for relabel in endpoint["relabelings"].as_array().unwrap() {
            for key in relabel.as_object().unwrap().keys() {
                assert!(
                    [
                        "sourceLabels",
                        "targetLabel",
                        "regex",
                        "replacement",
                        "action",
                        "separator"
                    ]
                    .contains(&key.as_str()),
                    "relabelings[].{key}"
                );
            }
        }
    }
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        service["metadata"]["labels"]
    );
}

#[test]
fn the_pieces_fit_the_daemon_they_deploy() {
    let resources = resources();
    // The ConfigMap's configuration is one this batchd accepts, sharing
    // its state folder with a cache per node.
    let config_map = &resources
        .iter()
        .find(|(_, r)| r["kind"] == "ConfigMap" && r["metadata"]["name"] == "batchd-config")
        .unwrap()
        .1;
    let text = config_map["data"]["batchd.toml"].as_str().unwrap();
    let config = batchd::config::Config::parse(text, batchd::validation::Syntax::Toml, "ConfigMap")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(config.shared_state);
    assert!(config.listen.ip().is_unspecified());
    assert_ne!(config.cache_root(), config.state_dir);
    // The jobs ConfigMap holds valid specs.
    let jobs = &resources
        .iter()
        .find(|(_, r)| r["kind"] == "ConfigMap" && r["metadata"]["name"] == "batchd-jobs")
        .unwrap()
        .1;
    let policies = batchd::policy::PolicySet::builtin();
    for (file, spec) in jobs["data"].as_object().unwrap() {
        let origin = batchd::spec::SpecOrigin {
            label: file.clone(),
            default_name: Some(file.trim_end_matches(".toml").to_string()),
            base_dir: None,
        };
        batchd::spec::parse_spec(
            spec.as_str().unwrap(),
            batchd::validation::Syntax::Toml,
            &origin,
            &policies,
        )
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    // The DaemonSet: GPU nodes by GPU feature discovery's label, one GPU,
    // the probes on the daemon's endpoints and port, the mounts where the
    // configuration points, the hardening.
    let daemonset = of_kind(&resources, "DaemonSet");
    let pod = &daemonset["spec"]["template"]["spec"];
    let terms = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchExpressions"];
    assert_eq!(terms[0]["key"], "nvidia.com/gpu.product");
    let container = &pod["containers"][0];
    assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], 1);
    assert_eq!(
        container["ports"][0]["containerPort"],
        u64::from(config.listen.port())
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for dir in [
        &config.state_dir,
        &config.jobs_dir,
        config.cache_root(),
        Path::new("/tmp"),
    ] {
        assert!(
            mounts.contains(&dir.to_str().unwrap()),
            "{dir:?} is not mounted"
        );
    }
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let user = pod["securityContext"]["runAsUser"].as_u64().unwrap();
    assert_ne!(user, 0);
    // The state volume is ReadWriteMany: every node mounts it.
    let claim = of_kind(&resources, "PersistentVolumeClaim");
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteMany");
    // The image: a multi-stage build whose final stage runs as that user,
    // exposes that port and starts the daemon.
    let containerfile = std::fs::read_to_string(repo().join("Containerfile")).unwrap();
    let stages = containerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(stages >= 2, "a multi-stage build");
    assert!(containerfile.contains("COPY --from=build /src/target/release/batchd"));
    assert!(
        containerfile.contains(&format!("USER {user}:")),
        "USER {user}"
    );
    assert!(containerfile.contains(&format!("EXPOSE {}", config.listen.port())));
    assert!(containerfile.contains("cargo build --release --locked"));
}

#[test]
fn the_plain_scrape_config_finds_the_pods_the_daemonset_annotates() {
    let scrape = documents(&deploy().join("prometheus-scrape.yml")).remove(0);
    let job = &scrape["scrape_configs"][0];
    assert_eq!(job["kubernetes_sd_configs"][0]["role"], "pod");
    assert_eq!(
        job["kubernetes_sd_configs"][0]["namespaces"]["names"][0],
        "batchd"
    );
    let resources = resources();
    let template = &of_kind(&resources, "DaemonSet")["spec"]["template"];
    let annotations = &template["metadata"]["annotations"];
    let container = &template["spec"]["containers"][0];
    // Kubernetes service discovery's names for a pod's labels and
    // annotations: `_`-for-anything-else, as Prometheus writes them.
    let meta = |kind: &str, key: &str| {
        let clean: String = key
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("__meta_kubernetes_pod_{kind}_{clean}")
    };
    let rules = job["relabel_configs"].as_array().unwrap();
    let keeps: Vec<(&str, &str)> = rules
        .iter()
        .filter(|r| r["action"] == "keep")
        .map(|r| {
            (
                r["source_labels"][0].as_str().unwrap(),
                r["regex"].as_str().unwrap(),
            )
        })
        .collect();
    // Every keep rule matches what the DaemonSet's pods carry.
    for (label, regex) in &keeps {
        let value = if let Some(rest) = label.strip_prefix("__meta_kubernetes_pod_annotation_") {
            annotations
                .as_object()
                .unwrap()
                .iter()
                .find(|(k, _)| meta("annotation", k).ends_with(rest))
                .map(|(_, v)| v.as_str().unwrap().to_string())
        } else if let Some(rest) = label.strip_prefix("__meta_kubernetes_pod_label_") {
            template["metadata"]["labels"]
                .as_object()
                .unwrap()
                .iter()
                .find(|(k, _)| meta("label", k).ends_with(rest))
                .map(|(_, v)| v.as_str().unwrap().to_string())
        } else {
            None
        };
        assert_eq!(value.as_deref(), Some(*regex), "keep rule on {label}");
    }
    assert_eq!(keeps.len(), 2);
    assert_eq!(
        annotations["prometheus.io/port"],
        container["ports"][0]["containerPort"].to_string()
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    // Prometheus itself, where its promtool has Kubernetes discovery
    // (Debian's build leaves it out and rejects the field).
    let Ok(output) = Command::new("promtool")
        .args(["check", "config", "--syntax-only"])
        .arg(deploy().join("prometheus-scrape.yml"))
        .output()
    else {
        eprintln!("skipped: no promtool");
        return;
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if report.contains("field kubernetes_sd_configs not found") {
        eprintln!("skipped: this promtool was built without Kubernetes service discovery");
        return;
    }
    assert!(output.status.success(), "{report}");
}
