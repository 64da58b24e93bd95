//! The HTML report in a real browser: headless Chromium (Debian's
//! `chromium`) renders a job's report to a PNG, and the charts' colours
//! must be on it, so the SVG really drew.

mod common;

use std::path::Path;
use std::process::Command;

use common::{outside_program, TINY};

/// The balanced policy's shares with one for the batch ramp.
const RAMP_SHARES: &str = "[policy_overrides.budget_shares]\nmax_fit = 0.14\nthroughput = 0.08\n\
                           lr_range_test = 0.06\nlr_confirmation = 0.22\nrace = 0.34\n\
                           lr_check = 0.08\nramp = 0.08\n";

/// Pixels within a small distance of `rgb`.
fn pixels_near(image: &[u8], channels: usize, rgb: [u8; 3]) -> usize {
    image
        .chunks(channels)
        .filter(|p| {
            p[..3]
                .iter()
                .zip(rgb)
                .all(|(a, b)| (i32::from(*a) - i32::from(b)).abs() <= 12)
        })
        .count()
}

#[test]
fn chromium_renders_the_report_with_its_charts() {
    let Some(chromium) = outside_program("chromium") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("tiny.toml");
    // With a share for the batch ramp, so its chart has something to draw.
    std::fs::write(&spec, format!("{TINY}{RAMP_SHARES}")).unwrap();
    let report = dir.path().join("tiny.html");
    let output = Command::new(env!("CARGO_BIN_EXE_batchd"))
        .env("BATCHD_CONFIG", "/dev/null")
        .arg("advise")
        .arg(&spec)
        .args(["--device", "cpu", "--json", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rec: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    common::check_report("tiny", &std::fs::read_to_string(&report).unwrap(), &rec);

    let screenshot = dir.path().join("tiny.png");
    let output = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1400,3200",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(format!("file://{}", report.display()))
        .output()
        .unwrap();
    assert!(
        screenshot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&screenshot).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut image = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut image).unwrap();
    image.truncate(info.buffer_size());
    let channels = info.color_type.samples();
    assert!(info.width >= 1000 && info.height >= 2000);
    // The series colour (lines and points), the budget line, the goodput
    // line: each drew a visible number of pixels.
    let mut colours = vec![
        ("chart series (#1f77b4)", [0x1f, 0x77, 0xb4], 300),
        ("memory budget line (#d62728)", [0xd6, 0x27, 0x28], 100),
        ("goodput line (#2ca02c)", [0x2c, 0xa0, 0x2c], 100),
    ];
    // The ramp chart's noise-scale points (#e377c2), where there were some.
    let points = rec["batch_schedule"]["points"]
        .as_array()
        .map_or(0, |p| p.len());
    if points > 0 {
        colours.push((
            "noise scale over training (#e377c2)",
            [0xe3, 0x77, 0xc2],
            10 * points,
        ));
    }
    for (what, rgb, at_least) in colours {
        let found = pixels_near(&image, channels, rgb);
        assert!(
            found >= at_least,
            "{what}: {found} pixels in the screenshot"
        );
    }
    // Keep the picture where a human can look at it.
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-screenshot.png");
    let _ = std::fs::copy(&screenshot, keep);
}
