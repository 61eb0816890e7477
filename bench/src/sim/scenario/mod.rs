//! The scenarios, each returning a report [`Section`], and what they share: sizes, steady-state
//! runs, and table formatting.

pub(crate) mod cost;
pub(crate) mod deploy;
pub(crate) mod imbalance;
pub(crate) mod slow;
pub(crate) mod zone;

use std::fmt::Write as _;
use std::time::Duration;

use crate::engine::{Counters, Mode, Sim};
use crate::fleet::{Fleet, PolicyKind, Subsetting, SEC};
use crate::stats::Spread;
use crate::svg::{bar_chart, Bar};

/// The report's account of what is real and what is modelled (after its first paragraph).
pub(crate) const METHOD: &str = "\
**What runs, and what is modelled.** Each simulated client holds its own lb-core picker over its own \
subset: the choice of every request is made by lb-core's code — `Policy::build` and `Picker::pick_at` of \
`RoundRobin`, `P2c` (least-request, PeakEWMA, reported utilization), `WeightedRoundRobin::from_load_reports` \
(gRFC A58 weights) and `Topology`; the load they read is lb-core's `Load`, updated by real `LoadGuard`s \
carrying each response's outcome, latency and load report; subsets come from lb-core's \
`discover::subsetting::choose`. In the rolling-deploy and zone-failure scenarios every client runs a real \
`lb_core::Pool` (its background task, endpoint state machine, reconnect backoff, outlier detection and \
snapshot publication), fed discovery updates through lb-core's discovery channel; connections are counted \
where that pool opens them. Modelled: backends (`workers` servers before one bounded FIFO queue, exponential \
service times: M/M/c queues), the network (requests arrive instantly; a stopped backend refuses before \
processing, and lb's engine re-sends such a request elsewhere, at most 3 times, as `Balance` does), clients' \
Poisson arrivals, the servers' load reports (application utilization, queries and errors per second over the \
last second, on every response) and the registry (each client receives each membership change after its own \
fixed propagation delay). Virtual time is tokio's paused clock, moved forward in steps of 100 µs; lb-core \
calls that take the time as an argument get the exact virtual time.\n";

/// Run-wide settings: the seed, quick or full sizes, and the command line's overrides.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) quick: bool,
    pub(crate) seed: u64,
    pub(crate) clients: Option<usize>,
    pub(crate) backends: Option<usize>,
    pub(crate) subset: Option<usize>,
    pub(crate) policy: Option<PolicyKind>,
    pub(crate) seconds: Option<f64>,
}

impl Settings {
    pub(crate) fn from_args(
        quick: bool,
        seed: u64,
        clients: Option<usize>,
        backends: Option<usize>,
        subset: Option<usize>,
        policy: Option<PolicyKind>,
        seconds: Option<f64>,
    ) -> anyhow::Result<Self> {
        if let Some(c) = clients {
            anyhow::ensure!((1..=1_000_000).contains(&c), "--clients must be between 1 and 1000000 (got {c})");
        }
        if let Some(b) = backends {
            anyhow::ensure!((1..=1_000_000).contains(&b), "--backends must be between 1 and 1000000 (got {b})");
        }
        if let (Some(k), Some(b)) = (subset, backends) {
            anyhow::ensure!(k <= b, "--subset {k} is larger than --backends {b}");
        }
        if let Some(s) = seconds {
            anyhow::ensure!(s.is_finite() && s > 0.0 && s <= 3_600.0, "--seconds must be above 0 and at most 3600 (got {s})");
        }
        Ok(Settings { quick, seed, clients, backends, subset, policy, seconds })
    }

    /// The scenario's fleet with the command line's sizes applied.
    pub(crate) fn sized(&self, mut fleet: Fleet) -> Fleet {
        if let Some(c) = self.clients {
            fleet.clients = c;
        }
        if let Some(b) = self.backends {
            fleet.backends = b;
        }
        if let Some(k) = self.subset {
            fleet.subset = k;
            if k == 0 {
                fleet.subsetting = Subsetting::None;
            }
        }
        fleet
    }

    /// The measured virtual time: the command line's, or the scenario's default.
    pub(crate) fn measure(&self, default: Duration) -> u64 {
        self.seconds.map_or(default.as_nanos() as u64, |s| (s * SEC as f64) as u64)
    }

    /// The policies to compare: the one asked for, or all of them.
    pub(crate) fn policies(&self) -> Vec<PolicyKind> {
        match self.policy {
            Some(p) => vec![p],
            None => PolicyKind::ALL.to_vec(),
        }
    }
}

/// The backends of every scenario: four servers, 20 ms mean service time (200 requests/s of
/// capacity), at most 100 requests waiting.
pub(crate) fn fleet(clients: usize, backends: usize, subset: usize, subsetting: Subsetting, load: f64) -> Fleet {
    Fleet {
        clients,
        backends,
        subset,
        subsetting,
        workers: 4,
        service: Duration::from_millis(20),
        queue_cap: 100,
        load,
        zones: 1,
        topology: false,
    }
}

/// One section of the report.
#[derive(Debug, Default)]
pub(crate) struct Section {
    pub(crate) title: String,
    /// Markdown body (charts referenced by file name).
    pub(crate) body: String,
    /// The tables alone, printed to the terminal as each scenario ends.
    pub(crate) tables: Vec<String>,
    /// `(file name, SVG document)`.
    pub(crate) charts: Vec<(String, String)>,
    pub(crate) headlines: Vec<String>,
}

impl Section {
    pub(crate) fn new(title: &str) -> Self {
        Section { title: title.to_string(), ..Section::default() }
    }

    pub(crate) fn para(&mut self, text: &str) {
        let _ = writeln!(self.body, "{text}\n");
    }

    pub(crate) fn table(&mut self, table: String) {
        let _ = writeln!(self.body, "{table}");
        self.tables.push(table);
    }

    pub(crate) fn bar_chart(&mut self, file: &str, title: &str, bars: &[Bar]) {
        let _ = writeln!(self.body, "![{title}]({file})\n");
        self.charts.push((file.to_string(), bar_chart(title, bars)));
    }

    pub(crate) fn svg(&mut self, file: &str, title: &str, svg: String) {
        let _ = writeln!(self.body, "![{title}]({file})\n");
        self.charts.push((file.to_string(), svg));
    }

    pub(crate) fn headline(&mut self, text: String) {
        let _ = writeln!(self.body, "**{text}**\n");
        self.headlines.push(text);
    }
}

/// A markdown table from a header and rows.
pub(crate) fn md_table(header: &[&str], align_right_from: usize, rows: &[Vec<String>]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "| {} |", header.join(" | "));
    let seps: Vec<&str> = (0..header.len()).map(|i| if i >= align_right_from { "---:" } else { "---" }).collect();
    let _ = writeln!(t, "|{}|", seps.join("|"));
    for r in rows {
        let _ = writeln!(t, "| {} |", r.join(" | "));
    }
    t
}

/// What one steady-state run measured.
#[derive(Clone, Debug)]
pub(crate) struct Steady {
    pub(crate) label: String,
    pub(crate) policy: PolicyKind,
    /// Per-backend utilization over the measured window.
    pub(crate) util: Vec<f64>,
    /// Clients per backend.
    pub(crate) conns: Vec<u32>,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) counters: Counters,
    /// Wall-clock seconds the run took.
    pub(crate) wall: f64,
}

impl Steady {
    pub(crate) fn util(&self) -> Spread {
        Spread::of(&self.util)
    }

    pub(crate) fn conns(&self) -> Spread {
        let v: Vec<f64> = self.conns.iter().map(|&c| f64::from(c)).collect();
        Spread::of(&v)
    }
}

/// One steady-state run to do: a fleet with direct pickers, warmed up for `warmup`, then
/// measured for `measure` (virtual nanoseconds).
#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub(crate) label: String,
    pub(crate) fleet: Fleet,
    pub(crate) policy: PolicyKind,
    pub(crate) seed: u64,
    /// Service-time multiplier per backend (1.0 when absent).
    pub(crate) slowness: Vec<f64>,
    pub(crate) warmup: u64,
    pub(crate) measure: u64,
}

/// Runs `jobs` on up to two threads (each with its own paused-clock runtime and its own seeded
/// lb-core generator, so every run is the same whichever thread runs it); results in job order.
pub(crate) fn run_jobs(jobs: Vec<Job>) -> anyhow::Result<Vec<Steady>> {
    // The load-report policy rebuilds every client's picker every second, which makes its runs
    // the longest: start them first so the two threads finish together.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| jobs[i].policy != PolicyKind::WrrOrca);
    let mut slots: Vec<Option<Job>> = jobs.into_iter().map(Some).collect();
    let queued: Vec<(usize, Job)> = order.iter().filter_map(|&i| slots[i].take().map(|j| (i, j))).collect();
    let mut done = parallel(queued, |(i, job)| async move { steady(&job).await.map(|r| (i, r)) })?;
    done.sort_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, r)| r).collect())
}

/// Runs `f` on every job, on up to two threads, each thread with its own current-thread runtime
/// whose clock is paused; results in job order.
pub(crate) fn parallel<J, T, F, Fut>(jobs: Vec<J>, f: F) -> anyhow::Result<Vec<T>>
where
    J: Send,
    T: Send,
    F: Fn(J) -> Fut + Sync,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 2);
    let queue = std::sync::Mutex::new(jobs.into_iter().enumerate().collect::<std::collections::VecDeque<_>>());
    let results = std::sync::Mutex::new(Vec::new());
    let poisoned = || anyhow::anyhow!("a simulation thread panicked");
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?;
                    // Bounded by the number of jobs: each turn takes one off the queue.
                    loop {
                        let next = queue.lock().map_err(|_| poisoned())?.pop_front();
                        let Some((i, job)) = next else { return Ok(()) };
                        let r = rt.block_on(f(job))?;
                        results.lock().map_err(|_| poisoned())?.push((i, r));
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| poisoned())??;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    let mut results = results.into_inner().map_err(|_| poisoned())?;
    results.sort_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, r)| r).collect())
}

/// One steady-state run. Utilization is each backend's served requests × its mean service time ÷
/// its capacity: the expected busy time of the work it was sent. (The realised busy time adds
/// the service-time draws' own scatter, which no balancer steers, and doubles the noise floor.)
async fn steady(job: &Job) -> anyhow::Result<Steady> {
    let wall = std::time::Instant::now();
    let mut sim = Sim::new(job.fleet.clone(), job.policy, job.seed, &job.slowness, Mode::Direct).await?;
    sim.run_until(job.warmup).await?;
    let served0: Vec<u64> = sim.backends.iter().map(|b| b.served).collect();
    let c0 = sim.counters.clone();
    drop(sim.take_latencies());
    sim.run_until(job.warmup + job.measure).await?;
    let util = sim
        .backends
        .iter()
        .zip(&served0)
        .map(|(be, s0)| (be.served - s0) as f64 * be.mean_service / (f64::from(be.workers()) * job.measure as f64))
        .collect();
    let mut lat = sim.take_latencies();
    let r = Steady {
        label: job.label.clone(),
        policy: job.policy,
        util,
        conns: sim.connections_per_backend(),
        p50: lat.ms(0.5),
        p99: lat.ms(0.99),
        p999: lat.ms(0.999),
        counters: sim.counters.since(&c0),
        wall: wall.elapsed().as_secs_f64(),
    };
    eprintln!(
        "  {}: max/mean {:.3}, p99 {:.1} ms, {} requests, {:.1} s",
        job.label,
        r.util().max_over_mean(),
        r.p99,
        r.counters.requests,
        r.wall
    );
    Ok(r)
}

/// The spread across `backends` that a perfectly even split would still show over a window in
/// which each backend serves `per_backend` requests on average: with Poisson arrivals split
/// evenly, each backend's count of requests is Poisson (relative standard deviation √(1 / n)).
/// The mean over 20 draws of max/mean, by sampling.
pub(crate) fn noise_floor(backends: usize, per_backend: f64, seed: u64) -> f64 {
    let mut rng = crate::rng::Rng::new(seed ^ 0x5EED);
    let sd = (1.0 / per_backend.max(1.0)).sqrt();
    let draws = 20;
    let mut total = 0.0;
    for _ in 0..draws {
        let v: Vec<f64> = (0..backends)
            .map(|_| {
                // Box–Muller.
                let (u1, u2) = (rng.unit(), rng.unit());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                (1.0 + sd * z).max(0.0)
            })
            .collect();
        total += Spread::of(&v).max_over_mean();
    }
    total / f64::from(draws)
}

pub(crate) fn fmt_n(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_tables_format() {
        assert_eq!(fmt_n(1_234_567), "1,234,567");
        assert_eq!(fmt_n(12), "12");
        let t = md_table(&["a", "b"], 1, &[vec!["x".into(), "1".into()]]);
        assert_eq!(t, "| a | b |\n|---|---:|\n| x | 1 |\n");
        let floor = noise_floor(1000, 3000.0, 1);
        assert!(floor > 1.05 && floor < 1.12, "{floor}");
    }
}
