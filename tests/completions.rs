//! `batchd completions SHELL` and `batchd man`, generated from the clap
//! definitions; and `--help` for the client subcommands.

mod common;

use common::run;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn batchd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_batchd"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env(
            "BATCHD_CONFIG",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/empty-config.toml"),
        )
        .env_remove("BATCHD_LOG_FORMAT");
    command
}

const SUBCOMMANDS: [&str; 15] = [
    "serve",
    "advise",
    "trial",
    "gpus",
    "validate",
    "policies",
    "config",
    "jobs",
    "show",
    "submit",
    "retune",
    "rm",
    "lr",
    "completions",
    "man",
];

#[test]
fn completions_are_generated_for_every_shell_and_know_the_subcommands() {
    let (code, bash, stderr) = run(batchd().args(["completions", "bash"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(bash.contains("complete "), "{bash}");
    for sub in SUBCOMMANDS {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    assert!(bash.contains("--watch") && bash.contains("--token-file"));
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (code, script, stderr) = run(batchd().args(["completions", shell]));
        assert_eq!(code, 0, "{shell}: {stderr}");
        assert!(script.contains("submit"), "{shell}: {script}");
    }
    let (code, _, _) = run(batchd().args(["completions", "tcsh"]));
    assert_eq!(code, 2, "an unknown shell is a usage error");
}

/// `man` from PATH, if installed (it is optional here).
fn man_program() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("man"))
            .find(|path| path.is_file())
    })
}

#[test]
fn the_man_page_covers_every_subcommand_and_renders() {
    let (code, page, stderr) = run(batchd().arg("man"));
    assert_eq!(code, 0, "{stderr}");
    assert!(page.starts_with(".TH batchd 1"), "{page}");
    for sub in SUBCOMMANDS {
        assert!(
            page.contains(&format!(".SS \"batchd {sub}\"")),
            "no section for {sub}"
        );
    }
    assert!(page.contains("BATCHD_URL") && page.contains("\\-\\-log\\-format"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("batchd.1");
    std::fs::write(&file, &page).unwrap();
    match man_program() {
        Some(man) => {
            let output = Command::new(man)
                .env("MANWIDTH", "80")
                .args(["-P", "cat", "-l"])
                .arg(&file)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            // Bold and underline come as overstrikes (`X\x08X`) to a pipe.
            let mut text = String::new();
            for c in String::from_utf8_lossy(&output.stdout).chars() {
                if c == '\x08' {
                    text.pop();
                } else {
                    text.push(c);
                }
            }
            let errors = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "man -l failed: {errors}");
            assert!(errors.trim().is_empty(), "man -l warned: {errors}");
            assert!(text.contains("batchd serve"), "{text}");
            assert!(text.contains("batchd advise"), "{text}");
        }
        None => eprintln!("skipped rendering: man is not installed"),
    }

    // One page per command with --out-dir.
    let out = dir.path().join("pages");
    let (code, stdout, stderr) = run(batchd().arg("man").arg("--out-dir").arg(&out));
    assert_eq!(code, 0, "{stderr}");
    for name in [
        "batchd.1",
        "batchd-serve.1",
        "batchd-jobs.1",
        "batchd-man.1",
    ] {
        let path = out.join(name);
        assert!(path.is_file(), "{name} missing; printed:\n{stdout}");
        assert!(stdout.contains(&path.display().to_string()), "{stdout}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(".TH "), "{name}");
    }
}

#[test]
fn every_client_subcommand_has_help_with_the_shared_flags() {
    for sub in ["jobs", "show", "submit", "retune", "rm", "lr"] {
        let (code, stdout, _) = run(batchd().args([sub, "--help"]));
        assert_eq!(code, 0, "{sub} --help");
        for flag in [
            "--url",
            "BATCHD_URL",
            "--token-file",
            "BATCHD_TOKEN_FILE",
            "--json",
        ] {
            assert!(
                stdout.contains(flag),
                "{sub} --help lacks {flag}:\n{stdout}"
            );
        }
    }
    for sub in ["completions", "man"] {
        let (code, stdout, _) = run(batchd().args([sub, "--help"]));
        assert_eq!(code, 0, "{sub} --help");
        assert!(stdout.contains("Usage: batchd"), "{stdout}");
    }
}
