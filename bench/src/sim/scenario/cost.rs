//! Scenario 5: what lb's own structures cost as the fleet grows — heap per client and per
//! connection, time per request — and what simulating them costs.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use lb_core::discover::{self, subsetting};
use lb_core::Endpoint;

use super::{fleet, md_table, Section, Settings};
use crate::alloc;
use crate::engine::{Mode, Sim};
use crate::fleet::{self as f, PolicyKind, Subsetting, MS, SEC};
use crate::svg::Bar;

/// The sizes measured.
#[derive(Debug)]
struct Sizes {
    /// `(clients, backends)` with pickers built by the simulation.
    direct: Vec<(usize, usize)>,
    /// `(clients, backends)` with a real `lb_core::Pool` per client.
    pooled: Vec<(usize, usize)>,
    /// Endpoint lists whose subset stream is measured.
    lists: Vec<usize>,
}

/// One measured size.
#[derive(Debug)]
struct Row {
    what: &'static str,
    clients: usize,
    backends: usize,
    subset: usize,
    build_s: f64,
    heap: usize,
    us_per_request: f64,
    wall_per_virtual_s: f64,
}

pub(crate) async fn run(s: &Settings) -> anyhow::Result<Section> {
    let policy = s.policy.unwrap_or(PolicyKind::P2cPeakEwma);
    let Sizes { direct, pooled, lists } = if s.quick {
        Sizes { direct: vec![(100, 20), (1_000, 100)], pooled: vec![(100, 20)], lists: vec![100, 1_000] }
    } else {
        Sizes {
            direct: vec![(1_000, 100), (10_000, 1_000), (100_000, 1_000), (10_000, 10_000)],
            pooled: vec![(1_000, 100), (10_000, 1_000)],
            lists: vec![100, 1_000, 10_000],
        }
    };
    let (warmup, measure) = (250 * MS, s.measure(Duration::from_millis(500)));
    let mut rows = Vec::new();
    for &(clients, backends) in &direct {
        rows.push(measure_size("simulated client (lb-core picker + loads)", clients, backends, policy, Mode::Direct, s.seed, warmup, measure).await?);
    }
    for &(clients, backends) in &pooled {
        let mode = Mode::Pooled { propagation: Duration::from_secs(1) };
        rows.push(measure_size("real `lb_core::Pool` per client", clients, backends, policy, mode, s.seed, warmup, measure).await?);
    }
    let mut sec = Section::new("5. Cost growth");
    sec.para(&format!(
        "Each size: subset 20 (lb-core's rendezvous subsetting), {}, 70 % load ({} requests/s per backend), simulated for \
         {:.1} virtual seconds after {:.1} s. *Heap* is what building the clients added (a counting allocator wraps the \
         system one): for simulated clients, each client's lb-core picker and one `Load` per connection; for real \
         pools, everything a `Pool` holds (its task, endpoint slots, connection handles, close signals, snapshot and \
         picker). Wall times are this machine's, shared with other work: read them as orders of magnitude. \
         100,000 real pools are not built: at the per-client heap measured below that would be several GB.",
        policy.label(),
        140,
        measure as f64 / SEC as f64,
        warmup as f64 / SEC as f64,
    ));
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let conns = r.clients * r.subset;
            vec![
                r.what.to_string(),
                super::fmt_n(r.clients as u64),
                super::fmt_n(r.backends as u64),
                super::fmt_n(conns as u64),
                format!("{:.2}", r.build_s),
                format!("{:.0}", r.heap as f64 / 1e6),
                super::fmt_n((r.heap / r.clients) as u64),
                super::fmt_n((r.heap / conns.max(1)) as u64),
                format!("{:.2}", r.us_per_request),
                format!("{:.2}", r.wall_per_virtual_s),
            ]
        })
        .collect();
    sec.table(md_table(
        &[
            "clients are",
            "clients",
            "backends",
            "connections",
            "build s",
            "heap MB",
            "heap bytes per client",
            "per connection",
            "µs per request",
            "wall s per virtual s",
        ],
        1,
        &table,
    ));
    let bars: Vec<Bar> = rows
        .iter()
        .map(|r| Bar {
            label: format!("{}, {}k × {}", if r.what.starts_with("real") { "Pool" } else { "picker" }, r.clients / 1000, r.backends),
            value: (r.heap / r.clients) as f64,
            text: format!("{} B per client", super::fmt_n((r.heap / r.clients) as u64)),
        })
        .collect();
    sec.bar_chart("sim5-memory.svg", "Scenario 5: heap per client (bytes)", &bars);

    // The subset stream keeps the whole list per client; `choose` runs over all of it.
    let mut list_rows = Vec::new();
    for &m in &lists {
        let (bytes, choose_us) = subset_stream_cost(m).await?;
        list_rows.push(vec![super::fmt_n(m as u64), super::fmt_n(bytes as u64), format!("{:.0}", bytes as f64 / m as f64), format!("{choose_us:.1}")]);
    }
    sec.para(
        "A real client with subsetting runs lb-core's `discover::subset` stream, which keeps the whole endpoint list it \
         was sent (to recompute the subset on every change) and runs `subsetting::choose` over all of it on each change. \
         The simulated clients above share one copy of the list instead; this is what each real client holds and spends:",
    );
    sec.table(md_table(&["endpoints listed", "subset stream heap per client", "bytes per endpoint", "choose() µs per change"], 0, &list_rows));
    let sim_row = rows.iter().filter(|r| r.what.starts_with("simulated")).max_by_key(|r| r.clients * 1_000_000 / r.backends.max(1) + r.clients);
    let pool_row = rows.iter().filter(|r| r.what.starts_with("real")).max_by_key(|r| r.clients);
    if let (Some(sim), Some(pool)) = (sim_row, pool_row) {
        sec.headline(format!(
            "cost: per client, lb-core's picker and 20 loads take {} B of heap and a real Pool of 20 endpoints {} B ({} B per endpoint); \
             {} simulated clients fit in {:.0} MB; a subset stream holds about {} B per listed endpoint",
            super::fmt_n((sim.heap / sim.clients) as u64),
            super::fmt_n((pool.heap / pool.clients) as u64),
            super::fmt_n((pool.heap / (pool.clients * pool.subset).max(1)) as u64),
            super::fmt_n(sim.clients as u64),
            sim.heap as f64 / 1e6,
            list_rows.last().map_or("–".to_string(), |r| r[2].clone()),
        ));
    }
    Ok(sec)
}

#[allow(clippy::too_many_arguments)]
async fn measure_size(
    what: &'static str,
    clients: usize,
    backends: usize,
    policy: PolicyKind,
    mode: Mode,
    seed: u64,
    warmup: u64,
    measure: u64,
) -> anyhow::Result<Row> {
    let fl = fleet(clients, backends, 20, Subsetting::Rendezvous, 0.7);
    let before = alloc::live();
    let t0 = Instant::now();
    let mut sim = Sim::new(fl, policy, seed, &[], mode).await?;
    let build_s = t0.elapsed().as_secs_f64();
    let heap = alloc::live().saturating_sub(before);
    sim.run_until(warmup).await?;
    let r0 = sim.counters.requests;
    let t1 = Instant::now();
    sim.run_until(warmup + measure).await?;
    let wall = t1.elapsed().as_secs_f64();
    let requests = sim.counters.requests - r0;
    eprintln!("  {what}: {clients} × {backends}: build {build_s:.1} s, {:.0} MB, {:.2} µs/request", heap as f64 / 1e6, wall * 1e6 / requests.max(1) as f64);
    Ok(Row {
        what,
        clients,
        backends,
        subset: 20.min(backends),
        build_s,
        heap,
        us_per_request: wall * 1e6 / requests.max(1) as f64,
        wall_per_virtual_s: wall / (measure as f64 / SEC as f64),
    })
}

/// The heap one client's subset stream holds over `m` endpoints, and one `choose` call's time.
async fn subset_stream_cost(m: usize) -> anyhow::Result<(usize, f64)> {
    let all: Vec<Endpoint> = (0..m as u32).map(|b| f::endpoint(b, 0, 1)).collect();
    const N: usize = 8;
    let before = alloc::live();
    let mut streams = Vec::with_capacity(N);
    for c in 0..N {
        let mut st = discover::subset(discover::fixed(all.clone()), 20, f::client_id(c));
        // The first item is the subset; the stream now holds the list it was given.
        let first = st.next().await;
        anyhow::ensure!(matches!(first, Some(Ok(_))), "the subset stream yielded no subset");
        drop(first);
        streams.push(st);
    }
    let bytes = alloc::live().saturating_sub(before) / N;
    drop(streams);
    let reps = (200_000 / m).clamp(3, 2_000);
    let t0 = Instant::now();
    let mut kept = 0;
    for c in 0..reps {
        kept += subsetting::choose(&all, 20, f::client_id(c).as_bytes()).len();
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / reps as f64;
    anyhow::ensure!(kept > 0, "choose kept nothing");
    Ok((bytes, us))
}
