//! Wires the agent together: sources → report loop → gRPC, metrics and the scheduler stream.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use wattwise_daemon::health::Liveness;
use wattwise_proto::v1::node_power_server::NodePowerServer;

use crate::api::grpc::NodePowerService;
use crate::api::metrics::{self, AgentMetrics};
use crate::calibrator::{Calibrator, Identity};
use crate::config::{AgentConfig, BmcMode, CpuSource};
use crate::health::{silence_limit, Reporting};
use crate::model::{NodeScale, PowerModel};
use crate::report::{EnergyReading, Readings, ReportBuilder};
use crate::sensors::bmc::BmcReadings;
use crate::sensors::collector::BmcCollector;
use crate::sensors::cpu::{CpuError, CpuSample, CpuSensor, FileCpu, SysinfoCpu};
use crate::sensors::energy::{EnergyExpiry, EnergySource, EnergyTracker};

/// Addresses the agent actually listens on (ports may have been 0 in the config).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
}

/// Starts everything, reports the bound addresses through `on_bound`, and runs until `shutdown`
/// resolves. Startup problems (model, config, ports) are errors; runtime problems (BMC down,
/// scheduler gone, energy source failing) are logged, exported and retried, never fatal.
pub async fn run(
    config: AgentConfig,
    sys_root: &Path,
    on_bound: impl FnOnce(Bound),
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let node_name = config.node_name.clone().context("node_name is not set")?;
    let model = Arc::new(load_model(&config)?);
    info!(model = %model.path().display(), name = %model.info().name, version = %model.info().version, "power model loaded");

    let metrics = AgentMetrics::new();
    metrics.set_model(model.info());
    let calibrator = Calibrator::start(
        &config.calibration,
        Identity::of(&node_name, &model),
        config.bmc.mode != BmcMode::None,
    );
    let liveness = Liveness::new();
    let mut cpu = cpu_sensor(&config)?;
    let energy = start_energy(&config, sys_root, &liveness)?;
    let bmc = match config.bmc.mode {
        BmcMode::None => None,
        _ => Some(BmcCollector::spawn(
            &config.bmc,
            config.interval,
            metrics.clone(),
            &liveness,
        )?),
    };

    let grpc_listener = wattwise_daemon::listen(config.grpc.listen, "grpc.listen").await?;
    let metrics_listener = wattwise_daemon::listen(config.metrics.listen, "metrics.listen").await?;
    let bound = Bound {
        grpc: grpc_listener.local_addr()?,
        metrics: metrics_listener.local_addr()?,
    };
    let (latest_tx, latest_rx) = watch::channel(None);
    let reporting = Arc::new(Reporting::new(config.interval));
    let grpc = wattwise_daemon::grpc::spawn(
        NodePowerServer::new(NodePowerService::new(latest_rx.clone())),
        grpc_listener,
    )
    .await?;
    let http = tokio::spawn(
        axum::serve(
            metrics_listener,
            metrics::router(metrics.clone(), liveness.clone(), reporting.clone()),
        )
        .into_future(),
    );
    let streamer = (!config.scheduler.endpoints.is_empty())
        .then(|| crate::stream::spawn(config.scheduler.clone(), latest_rx, metrics.clone()));
    info!(node = %node_name, grpc = %bound.grpc, metrics = %bound.metrics, "wattwise-agent serving");
    on_bound(bound);

    let mut builder = ReportBuilder::new(node_name, model, calibrator);
    let mut energy_expiry = EnergyExpiry::new(config.energy.interval);
    let mut saving: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
    // Beats once per tick, before the CPU read: a read hung in the kernel silences it.
    let heartbeat = liveness.register("report loop", silence_limit(config.interval));
    let report_loop = async {
        let mut built: u32 = 0;
        let mut ticker = tokio::time::interval(config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            heartbeat.beat();
            let sample;
            (cpu, sample) = sample_cpu(cpu).await?;
            let cpu = match sample {
                Ok(sample) => sample,
                Err(e) => {
                    warn!(error = %e, "cannot read CPU utilisation; skipping this report");
                    reporting.failed(format!("cannot read CPU utilisation: {e}"));
                    continue;
                }
            };
            let bmc_readings = bmc
                .as_ref()
                .map_or_else(BmcReadings::none, BmcCollector::snapshot);
            metrics.observe_bmc(&bmc_readings, bmc.is_some());
            let latest_energy = energy.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let now = Instant::now();
            metrics.set_energy_reading_age(
                latest_energy
                    .as_ref()
                    .map(|e| now.saturating_duration_since(e.read_at)),
            );
            let readings = Readings {
                cpu,
                bmc: bmc_readings,
                energy: energy_expiry.current(latest_energy, now),
            };
            match builder.build(&readings, SystemTime::now()) {
                Ok(report) => {
                    metrics.observe_report(&report);
                    metrics.observe_calibration(
                        &report,
                        &builder.calibrator().status(),
                        builder.uncalibrated_watts(),
                    );
                    latest_tx.send_replace(Some(Arc::new(report)));
                    reporting.produced(Instant::now());
                    built = built.saturating_add(1);
                    if built == WARM_AFTER_REPORTS {
                        release_startup_pages();
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot build a report");
                    reporting.failed(format!("cannot build a report: {e}"));
                }
            }
            // The state file is synced to disk: off the async workers, one write at a time.
            if let Some(done) = saving.take_if(|s| s.is_finished()) {
                let result = joined(done.await);
                metrics.calibration_saved(result.is_ok());
                builder.calibrator_mut().saved(result);
            }
            if saving.is_none() {
                if let Some(save) = builder.calibrator_mut().due_save(Instant::now()) {
                    saving = Some(tokio::task::spawn_blocking(move || save.write()));
                }
            }
        }
    };
    let outcome = tokio::select! {
        r = report_loop => r,
        _ = shutdown => {
            info!("shutting down");
            Ok(())
        }
        r = grpc => r.context("gRPC server task failed").and_then(|r| r.context("gRPC server stopped")),
        r = http => r.context("metrics server task failed").and_then(|r| r.context("metrics server stopped")),
    };
    if let Some(s) = streamer {
        s.abort();
    }
    // Whatever the fit learnt since the last save is kept, after any save still in flight.
    if let Some(pending) = saving {
        builder.calibrator_mut().saved(joined(pending.await));
    }
    if let Some(save) = builder.calibrator_mut().final_save() {
        let path = save.path.clone();
        match joined(tokio::task::spawn_blocking(move || save.write()).await) {
            Ok(()) => info!(path = %path.display(), "calibration state saved"),
            Err(e) => warn!(path = %path.display(), error = %e,
                "cannot save the calibration state at shutdown; what it learnt since its last save is lost"),
        }
    }
    outcome
}

/// One CPU sample, read off the async workers: a read can block (a hung sysfs or FIFO read) and
/// must stall only the report loop, whose heartbeat then goes silent, never a runtime worker.
async fn sample_cpu(
    mut sensor: Box<dyn CpuSensor>,
) -> Result<(Box<dyn CpuSensor>, Result<CpuSample, CpuError>)> {
    tokio::task::spawn_blocking(move || {
        let sample = sensor.sample();
        (sensor, sample)
    })
    .await
    .context("the CPU sensor failed")
}

/// The configured power model, loaded and validated on its probe grid: the first thing startup
/// does, and what `--check-config` runs so that a config it passes can start.
pub fn load_model(config: &AgentConfig) -> Result<PowerModel> {
    let path = config
        .model
        .path
        .as_deref()
        .context("model.path is not set")?;
    Ok(PowerModel::load(
        path,
        &config.model.overrides,
        NodeScale {
            idle_watts: config.model.idle_watts,
            peak_watts: config.model.peak_watts,
        },
    )?)
}

/// A state-file write's result, a writer that panicked being an error like any other.
fn joined(result: Result<std::io::Result<()>, tokio::task::JoinError>) -> std::io::Result<()> {
    result.unwrap_or_else(|e| Err(std::io::Error::other(format!("the writer failed: {e}"))))
}

/// Reports after which the agent counts as warm: the model is loaded and validated, servers
/// and streams are up, and the steady-state loop has run a few times.
const WARM_AFTER_REPORTS: u32 = 3;

/// Drops the code pages only startup needed from resident memory (see [`crate::resident`]).
fn release_startup_pages() {
    match crate::resident::release_startup_pages() {
        Ok(bytes) => debug!(
            advised_mib = bytes as f64 / (1024.0 * 1024.0),
            "released startup-only code pages"
        ),
        Err(e) => debug!(error = %e, "cannot release startup-only code pages; keeping them"),
    }
}

fn cpu_sensor(config: &AgentConfig) -> Result<Box<dyn CpuSensor>> {
    Ok(match config.cpu.source {
        CpuSource::Sysinfo => Box::new(SysinfoCpu::new(config.cpu.capacity_millicores)?),
        CpuSource::File => {
            let path = config.cpu.file.clone().context("cpu.file is not set")?;
            let capacity = match config.cpu.capacity_millicores {
                Some(c) => c,
                None => std::thread::available_parallelism()?.get() as u64 * 1000,
            };
            Box::new(FileCpu::new(path, capacity))
        }
    })
}

/// Reads the energy source on its own interval; the report loop takes the latest reading.
fn start_energy(
    config: &AgentConfig,
    sys_root: &Path,
    liveness: &Liveness,
) -> Result<Arc<Mutex<Option<EnergyReading>>>> {
    let latest = Arc::new(Mutex::new(None));
    let Some(source) =
        EnergySource::from_config(&config.energy.source, sys_root, config.energy.interval)?
    else {
        return Ok(latest);
    };
    let (writer, interval, band) = (
        latest.clone(),
        config.energy.interval,
        config.energy.hysteresis_percent,
    );
    // A cycle waits one interval and reads for at most another (the HTTP timeout); a file read
    // hung in the kernel silences the heartbeat.
    let heartbeat = liveness.register("energy source", silence_limit(interval * 2));
    tokio::spawn(async move {
        let mut tracker = EnergyTracker::new(band);
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            heartbeat.beat();
            match source.read_percent().await {
                Ok(percent) => {
                    let reading = EnergyReading {
                        level: tracker.observe(percent),
                        percent,
                        source: source.name(),
                        read_at: Instant::now(),
                    };
                    *writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(reading);
                }
                // The last good level stays in reports until it expires: a flaky meter must not
                // flip scheduling, a dead one must not pin it.
                Err(e) => {
                    warn!(error = %e, "cannot read the energy source; keeping the last level while it is recent")
                }
            }
        }
    });
    Ok(latest)
}
