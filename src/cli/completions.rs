//! `batchd completions SHELL` and `batchd man`, generated from the clap
//! definitions, so they never drift from the command line.
//!
//! `batchd man` writes one page, batchd(1), to stdout: the top-level
//! synopsis, description and global options, then a COMMANDS section with
//! each subcommand's synopsis, description and options. With `--out-dir
//! DIR` it writes instead a page per command, `batchd.1` and
//! `batchd-SUBCOMMAND.1` (git style), and prints their paths.

use std::io::Write;

use clap::CommandFactory;

use super::{Cli, CliError, CompletionsArgs, ManArgs};

pub fn completions(args: &CompletionsArgs) -> Result<(), CliError> {
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, "batchd", &mut out);
    out.flush().map_err(anyhow::Error::from)?;
    Ok(())
}

pub fn man(args: &ManArgs) -> Result<(), CliError> {
    if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("--out-dir {}: {e}", dir.display()))?;
        clap_mangen::generate_to(Cli::command(), dir)
            .map_err(|e| anyhow::anyhow!("--out-dir {}: {e}", dir.display()))?;
        let mut pages: Vec<_> = std::fs::read_dir(dir)
            .map_err(anyhow::Error::from)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("batchd") && n.ends_with(".1"))
            })
            .collect();
        pages.sort();
        for page in pages {
            println!("{}", page.display());
        }
        return Ok(());
    }
    let page = one_page().map_err(anyhow::Error::from)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&page).map_err(anyhow::Error::from)?;
    out.flush().map_err(anyhow::Error::from)?;
    Ok(())
}

/// batchd(1) with every subcommand's sections in it.
fn one_page() -> std::io::Result<Vec<u8>> {
    let command = Cli::command();
    let top = clap_mangen::Man::new(command.clone());
    let mut page = Vec::new();
    top.render_title(&mut page)?;
    top.render_name_section(&mut page)?;
    top.render_synopsis_section(&mut page)?;
    top.render_description_section(&mut page)?;
    top.render_options_section(&mut page)?;
    page.extend_from_slice(b".SH COMMANDS\n");
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("batchd {}", sub.get_name());
        // The subcommand alone: the global options are listed once, above.
        let man = clap_mangen::Man::new(sub.clone().bin_name(&name));
        page.extend_from_slice(format!(".SS \"{name}\"\n").as_bytes());
        for render in [
            clap_mangen::Man::render_synopsis_section,
            clap_mangen::Man::render_description_section,
            clap_mangen::Man::render_options_section,
        ] {
            let mut section = Vec::new();
            render(&man, &mut section)?;
            // Each renderer starts its own `.SH`; inside COMMANDS the
            // synopsis and description run on, and the options get a
            // paragraph of their own.
            let text = String::from_utf8_lossy(&section);
            for line in text.lines() {
                if line.starts_with(".SH OPTIONS") {
                    page.extend_from_slice(b".PP\nOptions:\n");
                } else if line.starts_with(".SH ") {
                    page.extend_from_slice(b".PP\n");
                } else {
                    page.extend_from_slice(line.as_bytes());
                    page.push(b'\n');
                }
            }
        }
    }
    top.render_version_section(&mut page)?;
    Ok(title_first(&String::from_utf8_lossy(&page)).into_bytes())
}

/// Every renderer starts its output with roff's apostrophe preamble (two
/// lines); the page keeps one, after the `.TH` line, which comes first.
fn title_first(page: &str) -> String {
    let preamble =
        |line: &str| line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq");
    let (title, rest): (Vec<&str>, Vec<&str>) = page
        .lines()
        .filter(|line| !preamble(line))
        .partition(|line| line.starts_with(".TH "));
    let mut out = String::new();
    for line in title
        .into_iter()
        .chain([".ie \\n(.g .ds Aq \\(aq", ".el .ds Aq '"])
        .chain(rest)
    {
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_has_a_section_for_every_subcommand() {
        let page = String::from_utf8(super::one_page().unwrap()).unwrap();
        assert!(page.starts_with(".TH batchd 1"), "{page}");
        for sub in [
            "serve",
            "advise",
            "jobs",
            "show",
            "submit",
            "completions",
            "man",
        ] {
            assert!(
                page.contains(&format!(".SS \"batchd {sub}\"")),
                "no section for {sub}"
            );
        }
        assert_eq!(page.matches(".SH OPTIONS").count(), 1);
        assert_eq!(page.matches(".ds Aq").count(), 2, "one preamble");
    }
}
