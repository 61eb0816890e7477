//! Runs `lb-sim --quick` and checks the harness, not the numbers: every scenario's section,
//! table and chart is written; a run replays exactly from its seed; bad arguments fail clearly.

use std::path::Path;
use std::process::{Command, Output};

fn lb_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lb-sim")).args(args).output().expect("run lb-sim")
}

#[test]
fn quick_simulation_writes_every_section_and_chart() {
    let dir = std::env::temp_dir().join(format!("lb-sim-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    let out = dir.join("SIM.md");
    let run = lb_sim(&["--quick", "--out", out.to_str().expect("utf-8 temp path")]);
    assert!(run.status.success(), "lb-sim --quick failed: {}", String::from_utf8_lossy(&run.stderr));
    let md = std::fs::read_to_string(&out).expect("the report was written");

    for heading in [
        "# lb fleet simulation",
        "**What runs, and what is modelled.**",
        "## Headlines",
        "## 1. Imbalance at scale",
        "## 2. A tenth of the backends at half speed",
        "## 3. Rolling deploy in waves of 10 %",
        "## 4. Zone failure",
        "## 5. Cost growth",
    ] {
        assert!(md.contains(heading), "missing `{heading}` in:\n{md}");
    }
    for row in [
        "| round robin, random subsets (baseline) |",
        "| P2C least-request |",
        "| P2C PeakEWMA |",
        "| WRR from load reports (A58) |",
        "| P2C reported utilization |",
        "balanced subsets (what-if)",
        "(no subsetting) |",
        "| lb-core deterministic subsets, restart in place |",
        "| random subset re-picked on every change |",
        "| before the failure |",
        "| after discovery drops them |",
        "| real `lb_core::Pool` per client |",
        "goal ≤ 1.10",
        "goal ≤ 1.5x",
        "(goal 0:",
    ] {
        assert!(md.contains(row), "missing `{row}` in:\n{md}");
    }
    let mut charts = 0;
    for part in md.split("](").skip(1) {
        let file = part.split(')').next().expect("split yields a first part");
        if !file.ends_with(".svg") {
            continue;
        }
        let svg = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("chart {file}: {e}"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{file} is not an SVG document");
        assert!(svg.contains("<rect") || svg.contains("<polyline"), "{file} draws nothing");
        charts += 1;
    }
    assert!(charts >= 8, "expected at least 8 charts, found {charts}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_run_replays_from_its_seed() {
    let tables = |seed: &str| {
        let run = lb_sim(&["imbalance", "--quick", "--seed", seed]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        String::from_utf8(run.stdout).expect("utf-8 output")
    };
    let first = tables("7");
    assert!(first.contains("| P2C PeakEWMA |"), "{first}");
    assert_eq!(first, tables("7"), "the same seed must give the same tables");
    assert_ne!(first, tables("8"), "another seed, other draws");
    // The pooled scenarios run real pool tasks on the paused clock (reconnects with jittered
    // backoff, pickers rebuilt as connections come and go): they replay too.
    for scenario in ["zone", "deploy"] {
        let tables = |seed: &str| {
            let run = lb_sim(&[scenario, "--quick", "--seed", seed]);
            assert!(run.status.success(), "{scenario}: {}", String::from_utf8_lossy(&run.stderr));
            String::from_utf8(run.stdout).expect("utf-8 output")
        };
        let first = tables("3");
        assert!(first.contains("|---"), "{scenario} printed no table: {first}");
        assert_eq!(first, tables("3"), "{scenario}: the same seed must give the same tables");
    }
}

#[test]
fn bad_arguments_fail_with_a_clear_error() {
    for (args, expected) in [
        (&["imbalance", "--clients", "0"][..], "--clients must be between 1 and 1000000"),
        (&["imbalance", "--subset", "30", "--backends", "10"][..], "--subset 30 is larger than --backends 10"),
        (&["imbalance", "--policy", "fastest"][..], "unknown policy `fastest`"),
        (&["imbalance", "--seconds", "0"][..], "--seconds must be above 0"),
        (&["nonsense"][..], "invalid value 'nonsense'"),
    ] {
        let run = lb_sim(args);
        assert!(!run.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains(expected), "{args:?}: expected `{expected}` in: {err}");
    }
    assert!(Path::new(env!("CARGO_BIN_EXE_lb-sim")).exists());
}
