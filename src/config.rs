//! The daemon's configuration file (`/etc/batchd/batchd.toml` by default).
//!
//! Defaults fit a system install; command-line flags override single
//! settings for local use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::units::ByteSize;
use crate::validation::{
    deserialize_section, parse_document, DocumentErrors, FieldError, Problems, Syntax,
};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/batchd/batchd.toml";

/// A validated daemon configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP API listens on. Loopback by default: the API can
    /// start trials, so exposing it is a deliberate choice.
    pub listen: SocketAddr,
    /// The watched folder users drop job specs into.
    pub jobs_dir: PathBuf,
    /// Where recommendations and job history are kept.
    pub state_dir: PathBuf,
    /// Extra or replacement policies; the shipped ones are built in.
    pub policies_dir: PathBuf,
    /// Searches that may run at the same time. Never more than one runs per
    /// device, so the default lets every GPU work.
    pub max_concurrent_jobs: u32,
    /// Largest HTTP request body accepted.
    pub max_request_body: ByteSize,
    /// Largest spec file the watcher reads from the jobs folder; a larger
    /// one becomes an `invalid` job saying so.
    pub max_spec_file: ByteSize,
    /// Folders that specs posted over HTTP may read data from.
    pub data_roots: Vec<PathBuf>,
    /// File holding the bearer token that protects state-changing endpoints.
    pub api_token_file: Option<PathBuf>,
    /// Accept `runner = "command"` specs over HTTP. Such a spec runs code as
    /// the daemon's user, so this needs `api_token_file` too. Off: command
    /// jobs come only from the jobs folder, whose permissions decide who
    /// may run code.
    pub allow_command_jobs_over_http: bool,
    /// Host names (or `name:port`) the API answers to besides its listen
    /// address and `localhost`. Any other `Host` header is refused before
    /// a handler runs: a web page on a name rebound to this machine sends
    /// its own name (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// How command trials are contained: `auto`, `cgroup` or `subreaper`.
    pub trial_containment: crate::trial::Containment,
    /// Share the state folder with other daemons (a fleet of GPU nodes on
    /// one ReadWriteMany volume): each recommendation is computed by the
    /// first daemon to take its lease and served by all (docs/fleet.md).
    /// Off: the state folder is this daemon's alone, and a second daemon
    /// on it is refused.
    pub shared_state: bool,
    /// How long a lease on a search lives past its holder's last
    /// heartbeat (renewed every third of it); another daemon takes the
    /// work over after this plus half of it. At least 1s.
    #[serde(with = "crate::units::duration_text")]
    pub lease_ttl: std::time::Duration,
    /// Where compiled kernels and decoded data are cached: per node, so
    /// never on a shared state folder. Default: the state folder.
    pub cache_dir: Option<PathBuf>,
    /// The log format: `text` for people (the default) or `json`, one
    /// object per line with the job's name in a `job` field. The
    /// `--log-format` flag wins; read at start (a reload keeps the format).
    pub log_format: crate::logging::LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8477)),
            jobs_dir: PathBuf::from("/etc/batchd/jobs.d"),
            state_dir: PathBuf::from("/var/lib/batchd"),
            policies_dir: PathBuf::from("/etc/batchd/policies"),
            max_concurrent_jobs: 16,
            max_request_body: ByteSize(ByteSize::MIB),
            max_spec_file: ByteSize(crate::spec::DEFAULT_SPEC_FILE_LIMIT),
            data_roots: Vec::new(),
            api_token_file: None,
            allow_command_jobs_over_http: false,
            allowed_hosts: Vec::new(),
            trial_containment: crate::trial::Containment::Auto,
            shared_state: false,
            lease_ttl: std::time::Duration::from_secs(60),
            cache_dir: None,
            log_format: crate::logging::LogFormat::Text,
        }
    }
}

/// Command-line settings that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub jobs_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub policies_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
}

impl Config {
    /// Parses and validates configuration text.
    pub fn parse(text: &str, syntax: Syntax, label: &str) -> Result<Config, DocumentErrors> {
        let mut problems = Problems::new();
        let config = match parse_document(text, syntax) {
            Ok(serde_json::Value::Null) => Some(Config::default()),
            Ok(document) => deserialize_section::<Config>(&document, "", &mut problems),
            Err(error) => {
                problems.extend([error]);
                None
            }
        };
        if let Some(config) = &config {
            config.check(&mut problems);
        }
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(DocumentErrors {
                source: label.to_string(),
                errors: problems.into_errors(),
            }),
        }
    }

    /// Loads the configuration: `explicit` must exist; without it the
    /// default path is used when present, else the built-in defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config, DocumentErrors> {
        let path = match explicit {
            Some(path) => path.to_path_buf(),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => PathBuf::from(DEFAULT_CONFIG_PATH),
            None => return Ok(Config::default()),
        };
        let label = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| DocumentErrors {
            source: label.clone(),
            errors: vec![FieldError::new(
                "",
                format!("cannot read configuration: {e}"),
            )],
        })?;
        let syntax = Syntax::from_path(&path).unwrap_or(Syntax::Toml);
        Config::parse(&text, syntax, &label)
    }

    pub fn apply(mut self, overrides: &Overrides) -> Config {
        if let Some(dir) = &overrides.jobs_dir {
            self.jobs_dir = dir.clone();
        }
        if let Some(dir) = &overrides.state_dir {
            self.state_dir = dir.clone();
        }
        if let Some(dir) = &overrides.policies_dir {
            self.policies_dir = dir.clone();
        }
        if let Some(listen) = overrides.listen {
            self.listen = listen;
        }
        self
    }

    /// Where the per-node caches go: `cache_dir`, else the state folder.
    pub fn cache_root(&self) -> &Path {
        self.cache_dir.as_deref().unwrap_or(&self.state_dir)
    }

    fn check(&self, problems: &mut Problems) {
        if self.allow_command_jobs_over_http && self.api_token_file.is_none() {
            problems.push(
                "allow_command_jobs_over_http",
                "needs api_token_file: posting a command job runs code, so it must be authenticated",
            );
        }
        if self.max_concurrent_jobs == 0 {
            problems.push("max_concurrent_jobs", "must be > 0, got 0");
        }
        if self.max_request_body.bytes() < 1024 {
            problems.push(
                "max_request_body",
                format!("must be at least 1KiB, got {}", self.max_request_body),
            );
        }
        if self.max_spec_file.bytes() < 1024 {
            problems.push(
                "max_spec_file",
                format!("must be at least 1KiB, got {}", self.max_spec_file),
            );
        }
        for (i, host) in self.allowed_hosts.iter().enumerate() {
            let name = host.trim();
            if name.is_empty() || name.contains(['/', ' ', '@', '*']) {
                problems.push(
                    format!("allowed_hosts[{i}]"),
                    format!("must be a host name or address, optionally with :port, got `{host}`"),
                );
            }
        }
        for (i, root) in self.data_roots.iter().enumerate() {
            if !root.is_absolute() {
                problems.push(
                    format!("data_roots[{i}]"),
                    format!("must be an absolute path, got {}", root.display()),
                );
            }
        }
        if self.lease_ttl < std::time::Duration::from_secs(1) {
            problems.push(
                "lease_ttl",
                format!(
                    "must be at least 1s, got {}",
                    crate::units::format_duration(self.lease_ttl)
                ),
            );
        }
        if self
            .cache_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            problems.push("cache_dir", "must not be empty");
        }
        for (field, path) in [
            ("jobs_dir", &self.jobs_dir),
            ("state_dir", &self.state_dir),
            ("policies_dir", &self.policies_dir),
        ] {
            if path.as_os_str().is_empty() {
                problems.push(field, "must not be empty");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_a_system_install() {
        let config = Config::default();
        assert!(config.listen.ip().is_loopback());
        assert_eq!(config.jobs_dir, Path::new("/etc/batchd/jobs.d"));
        assert_eq!(config.state_dir, Path::new("/var/lib/batchd"));
    }

    #[test]
    fn partial_file_keeps_other_defaults_and_flags_win() {
        let config = Config::parse(
            "state_dir = \"/srv/batchd\"\nmax_concurrent_jobs = 2\n",
            Syntax::Toml,
            "c.toml",
        )
        .unwrap();
        assert_eq!(config.state_dir, Path::new("/srv/batchd"));
        assert_eq!(config.max_concurrent_jobs, 2);
        assert_eq!(config.jobs_dir, Path::new("/etc/batchd/jobs.d"));
        assert_eq!(config.log_format, crate::logging::LogFormat::Text);
        let json = Config::parse("log_format = \"json\"\n", Syntax::Toml, "c.toml").unwrap();
        assert_eq!(json.log_format, crate::logging::LogFormat::Json);
        let error = Config::parse("log_format = \"xml\"\n", Syntax::Toml, "c.toml").unwrap_err();
        assert_eq!(error.errors[0].field, "log_format", "{error}");
        let config = config.apply(&Overrides {
            state_dir: Some("/tmp/s".into()),
            listen: Some("127.0.0.1:9000".parse().unwrap()),
            ..Overrides::default()
        });
        assert_eq!(config.state_dir, Path::new("/tmp/s"));
        assert_eq!(config.listen.port(), 9000);
    }

    #[test]
    fn bad_settings_name_their_field() {
        let error = Config::parse("listen = \"nowhere\"\n", Syntax::Toml, "c.toml").unwrap_err();
        assert_eq!(error.errors[0].field, "listen");
        let error = Config::parse("jobsdir = \"/x\"\n", Syntax::Toml, "c.toml").unwrap_err();
        assert!(
            error.to_string().contains("did you mean `jobs_dir`?"),
            "{error}"
        );
        let error = Config::parse(
            "max_concurrent_jobs = 0\ndata_roots = [\"rel\"]\n",
            Syntax::Toml,
            "c.toml",
        )
        .unwrap_err();
        assert_eq!(error.errors.len(), 2);
    }
}
