//! `lb-sim`: a discrete-event simulation of a fleet of lb clients and backends in virtual time,
//! driving lb-core's own pickers, load tracking, subsetting, topology and pool code.
//!
//! ```text
//! cargo run --release -p lb-bench --bin lb-sim                      # every scenario, writes bench/SIM.md
//! cargo run --release -p lb-bench --bin lb-sim -- imbalance --clients 2000 --policy p2c-ewma
//! cargo run -p lb-bench --bin lb-sim -- --quick --out /tmp/sim/SIM.md  # harness check (tests)
//! ```
//!
//! What is lb-core's code and what is modelled is set out in `engine.rs` and `pooled.rs`, and
//! at the top of the report it writes.

#![forbid(unsafe_code)]

mod alloc;
mod chart;
mod engine;
mod fleet;
mod pooled;
mod rng;
mod scenario;
mod stats;
#[path = "../svg.rs"]
mod svg;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use crate::fleet::PolicyKind;
use crate::scenario::{Section, Settings};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::counting();

/// Which scenario to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    /// Every scenario; writes the report.
    All,
    /// 1. Imbalance at scale.
    Imbalance,
    /// 2. Heterogeneous capacity: a tenth of the backends at half speed.
    Slow,
    /// 3. Rolling deploy in waves of 10 %.
    Deploy,
    /// 4. Zone failure.
    Zone,
    /// 5. Cost growth: time and memory as the fleet grows.
    Cost,
}

#[derive(Debug, Parser)]
#[command(name = "lb-sim", about = "Fleet-scale simulation of lb's policies in virtual time; writes markdown and SVG charts")]
struct Args {
    /// The scenario (default: all of them, written to --out).
    #[arg(value_enum, default_value_t = Which::All)]
    scenario: Which,
    /// Client processes (overrides the scenario's default).
    #[arg(long)]
    clients: Option<usize>,
    /// Backends (overrides the scenario's default).
    #[arg(long)]
    backends: Option<usize>,
    /// Backends per client (0: no subsetting; overrides the scenario's default).
    #[arg(long)]
    subset: Option<usize>,
    /// Run only this policy where a scenario compares policies (rr, p2c, p2c-ewma, wrr-orca, p2c-util).
    #[arg(long)]
    policy: Option<PolicyKind>,
    /// Measured virtual seconds (overrides the scenario's default).
    #[arg(long)]
    seconds: Option<f64>,
    /// The seed every random draw derives from.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Small sizes that prove the harness (the test suite runs this); numbers are noise.
    #[arg(long)]
    quick: bool,
    /// Where to write the report (default bench/SIM.md when running every scenario; a single
    /// scenario prints its tables and writes only when this is given).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    prefer_huge_pages();
    let args = Args::parse();
    let settings = Settings::from_args(
        args.quick,
        args.seed,
        args.clients,
        args.backends,
        args.subset,
        args.policy,
        args.seconds,
    )?;
    // One thread, a paused clock: lb-core's timers and `Instant`s follow the virtual time.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .context("build the runtime")?;
    let started = Instant::now();
    let sections = rt.block_on(run(args.scenario, &settings))?;
    let took = started.elapsed().as_secs_f64();
    let out = match (&args.out, args.scenario) {
        (Some(out), _) => Some(out.clone()),
        (None, Which::All) => Some(PathBuf::from("bench/SIM.md")),
        (None, _) => None,
    };
    if let Some(out) = out {
        write_report(&out, &sections, &settings, &command_line(), took)?;
        eprintln!("wrote {} in {took:.0} s", out.display());
    } else {
        eprintln!("done in {took:.0} s");
    }
    Ok(())
}

async fn run(which: Which, s: &Settings) -> anyhow::Result<Vec<Section>> {
    let mut sections = Vec::new();
    let want = |w: Which| which == Which::All || which == w;
    let mut healthy = None;
    if want(Which::Imbalance) {
        eprintln!("scenario 1: imbalance at scale");
        let (section, baseline) = scenario::imbalance::run(s).context("scenario 1 (imbalance)")?;
        healthy = Some(baseline);
        print_section(&section);
        sections.push(section);
    }
    if want(Which::Slow) {
        eprintln!("scenario 2: a tenth of the backends at half speed");
        let section = scenario::slow::run(s, healthy.as_ref()).context("scenario 2 (slow backends)")?;
        print_section(&section);
        sections.push(section);
    }
    if want(Which::Deploy) {
        eprintln!("scenario 3: rolling deploy");
        let section = scenario::deploy::run(s).context("scenario 3 (rolling deploy)")?;
        print_section(&section);
        sections.push(section);
    }
    if want(Which::Zone) {
        eprintln!("scenario 4: zone failure");
        let section = scenario::zone::run(s).context("scenario 4 (zone failure)")?;
        print_section(&section);
        sections.push(section);
    }
    if want(Which::Cost) {
        eprintln!("scenario 5: cost growth");
        let section = scenario::cost::run(s).await.context("scenario 5 (cost growth)")?;
        print_section(&section);
        sections.push(section);
    }
    Ok(sections)
}

fn print_section(s: &Section) {
    println!("## {}\n", s.title);
    for t in &s.tables {
        println!("{t}");
    }
    for h in &s.headlines {
        println!("- {h}");
    }
    println!();
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cmd = String::from("cargo run --release -p lb-bench --bin lb-sim");
    if !args.is_empty() {
        cmd.push_str(" -- ");
        cmd.push_str(&args.join(" "));
    }
    cmd
}

fn write_report(out: &std::path::Path, sections: &[Section], s: &Settings, cmd: &str, took: f64) -> anyhow::Result<()> {
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut md = String::new();
    let _ = writeln!(md, "# lb fleet simulation\n");
    let _ = writeln!(
        md,
        "Generated by `{cmd}` (seed {}) in {took:.0} s of wall time on a machine with {} CPU core(s); peak heap {:.0} MB. \
         Every figure is from virtual time and replays exactly from the seed; only the wall times and memory of \
         scenario 5 depend on the machine.{}\n",
        s.seed,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        alloc::peak() as f64 / 1e6,
        if s.quick { " **This is a `--quick` run: it proves the harness; its numbers are noise.**" } else { "" }
    );
    md.push_str(scenario::METHOD);
    let _ = writeln!(md, "\n## Headlines\n");
    for sec in sections {
        for h in &sec.headlines {
            let _ = writeln!(md, "- {h}");
        }
    }
    let _ = writeln!(md);
    for sec in sections {
        let _ = writeln!(md, "## {}\n\n{}", sec.title, sec.body);
        for (file, svg) in &sec.charts {
            std::fs::write(dir.join(file), svg).with_context(|| format!("write {file}"))?;
        }
    }
    std::fs::write(out, md).with_context(|| format!("write {}", out.display()))
}

/// The simulation's working set is hundreds of megabytes of small objects touched in random
/// order (one client's state per request); with 4 KiB pages nearly every pick misses the TLB,
/// which made runs on a 2-core VM three times slower. glibc's malloc backs its arenas with
/// transparent huge pages when asked through `GLIBC_TUNABLES`, which it reads at start-up only:
/// so the process runs itself again with it set (once; `LB_SIM_SMALL_PAGES=1` opts out).
fn prefer_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt as _;
        if std::env::var_os("GLIBC_TUNABLES").is_some() || std::env::var_os("LB_SIM_SMALL_PAGES").is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
            .exec();
        eprintln!("lb-sim: could not run itself with huge pages ({err}); continuing with small pages");
    }
}
