//! Runs `lb-report --quick` and checks that the harness produced every section of the report and
//! every chart. It checks the harness, not the numbers (performance figures are never asserted in
//! tests; they are read from the full report).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn quick_report_has_every_section_and_chart() {
    let dir = std::env::temp_dir().join(format!("lb-report-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    let out: PathBuf = dir.join("REPORT.md");
    let status = Command::new(env!("CARGO_BIN_EXE_lb-report"))
        .args(["--quick", "--out"])
        .arg(&out)
        .status()
        .expect("run lb-report");
    assert!(status.success(), "lb-report --quick failed: {status}");
    let md = std::fs::read_to_string(&out).expect("the report was written");

    // The fleet simulation's report is linked from this one (lb-sim writes it, lb-report never does).
    assert!(md.contains("[SIM.md](SIM.md)"), "no link to the simulation report in:\n{md}");
    for heading in [
        "## Headlines",
        "## 1. Centralized proxy vs in-process balancing",
        "## 2. L4 connection balancing vs per-request balancing",
        "## 3. One slow backend",
        "## 4. Churn in etcd",
        "## 5. Faults: a backend SIGKILLed during load",
        "## 6. Unequal capacities, load reported by the servers (ORCA)",
        "## 7. Retry storm: a degraded service, with and without a retry budget",
        "## 8. Hedging against a latency tail",
        "## 9. A stalled backend, with and without circuit breaking",
    ] {
        assert!(md.contains(heading), "missing section `{heading}` in:\n{md}");
    }
    // Every contender has a row (nginx's says "not measured" when nginx is not installed).
    for row in [
        "| nginx grpc_pass (central proxy) |",
        "| LbChannel (P2C PeakEWMA) |",
        "| tonic balance_list |",
        "| direct Channel, 1 backend (floor) |",
        "| LbChannel round robin |",
        "| LbChannel P2C least-request |",
        "| backend 4 |",
        "LbChannel round robin share",
        "| LbChannel (defaults) |",
        "| churn (first half) |",
        "| added → first call",
        "| 5 attempts, no budget |",
        "| 5 attempts, default budget |",
        "| hedge after 10 ms |",
        "| hedge after the p95 (adaptive) |",
        "| round robin + circuit breaking |",
    ] {
        assert!(md.contains(row), "missing row `{row}` in:\n{md}");
    }
    let nginx_installed = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    if nginx_installed {
        assert!(md.contains("LbChannel vs nginx grpc_pass:"), "nginx is installed but was not measured:\n{md}");
    } else {
        assert!(md.contains("nginx is not installed"), "the report must say nginx was not measured:\n{md}");
    }
    // Scenario 2's L4 baseline is the agent's nftables VIP wherever namespaces can be made (root
    // with `ip` and `nft`, as scripts/test-all.sh provides); the report says which one it measured.
    let capable = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        && Command::new("sh").args(["-c", "command -v nft && command -v ip"]).output().is_ok_and(|o| o.status.success());
    if capable {
        assert!(md.contains("L4 (lb-agent's nftables VIP) vs per-request"), "scenario 2 did not use the agent's VIP:\n{md}");
    } else {
        assert!(md.contains("L4 (the in-process TCP proxy) vs per-request"), "scenario 2 must name its baseline:\n{md}");
    }
    // Every chart the report references exists and is an SVG with bars.
    let mut charts = 0;
    for part in md.split("](").skip(1) {
        let file = part.split(')').next().expect("split yields a first part");
        if !file.ends_with(".svg") {
            continue;
        }
        let svg = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("chart {file}: {e}"));
        assert!(svg.starts_with("<svg") && svg.contains("<rect") && svg.trim_end().ends_with("</svg>"), "{file} is not a bar chart");
        charts += 1;
    }
    assert!(charts >= 9, "expected at least 9 charts, found {charts}");
    let _ = std::fs::remove_dir_all(&dir);
}
