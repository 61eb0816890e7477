//! `lb-agent`: programs netfilter so that connections to virtual IPs are balanced.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb_agent::http::Health;
use lb_agent::run::{self, Options};
use lb_agent::Config;

/// Balance virtual IP:port services to the endpoints a registry lists, in the kernel.
#[derive(Parser, Debug)]
#[command(name = "lb-agent", version)]
struct Cli {
    /// The TOML configuration file.
    #[arg(long, short, global = true, default_value = "/etc/lb-agent/config.toml")]
    config: PathBuf,
    /// Sync once and exit.
    #[arg(long)]
    once: bool,
    /// Print the exact kernel transaction instead of applying it (implies --once).
    #[arg(long, global = true)]
    dry_run: bool,
    /// With --once, how long to wait for every service's first endpoint list.
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    initial_timeout: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Remove everything the agent created (its nftables table, iptables chains or IPVS services).
    Cleanup,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let cfg = Config::load(&cli.config)?;
    let mut stdout = std::io::stdout();
    if let Some(Command::Cleanup) = cli.command {
        run::cleanup(&cfg, cli.dry_run, &mut stdout)?;
        if !cli.dry_run {
            tracing::info!("removed everything the agent created");
        }
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        let health = Arc::new(Health::default());
        if let Some(addr) = cfg.metrics_addr {
            let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
                .context("invalid histogram buckets")?
                .install_recorder()
                .context("cannot install the metrics recorder")?;
            lb_agent::metrics::describe();
            let bound = lb_agent::http::serve(addr, handle, health.clone()).await?;
            tracing::info!(%bound, "serving /healthz and /metrics");
        }
        let opts = Options { once: cli.once, dry_run: cli.dry_run, initial_timeout: Duration::from_secs(cli.initial_timeout) };
        let shutdown = async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return std::future::pending().await,
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
        let path = cli.config.clone();
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    match Config::load(&path) {
                        Ok(cfg) => {
                            if reload_tx.send(cfg).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "SIGHUP: configuration rejected; keeping the current one");
                            metrics::counter!(lb_agent::metrics::ERRORS, "kind" => "config").increment(1);
                        }
                    }
                }
            });
        }
        run::run(cfg, opts, health, &mut stdout, shutdown, reload_rx).await?;
        std::io::stdout().flush().ok();
        Ok(())
    })
}
