//! `roadrep uplink status|send`, and the uplink of a replay.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use roadrep::config::RoadrepConfig;
use roadrep::store::Store;
use roadrep::uplink::{LinkBoard, LinkState, RunningUplink, UplinkConfig, UplinkReport};

use super::cli::{UplinkArgs, UplinkCommand};
use super::client;

pub fn run(config_path: Option<&Path>, args: &UplinkArgs) -> anyhow::Result<ExitCode> {
    let config = RoadrepConfig::load(config_path)?;
    let uplink = config.uplink.clone().with_context(|| {
        format!(
            "no [uplink] in the config ({})",
            RoadrepConfig::file_to_load(config_path)
                .map_or("built-in defaults".into(), |p| p.display().to_string())
        )
    })?;
    match &args.command {
        UplinkCommand::Status { json } => {
            let report = match from_daemon(&config)? {
                Some(r) => r,
                None => {
                    let store = open_store(&config)?;
                    let outbox = store.outbox_stats()?;
                    roadrep::uplink::link::report(&uplink, LinkState::Stopped, 0, 0, outbox)
                }
            };
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        UplinkCommand::Send { timeout_secs } => {
            anyhow::ensure!(
                from_daemon(&config)?.is_none(),
                "a daemon runs on this store and sends its outbox itself"
            );
            let mut store = open_store(&config)?;
            let stop = Arc::new(AtomicBool::new(false));
            let uplink = ReplayUplink::start(&uplink, &mut store, Vec::new())?;
            let left = uplink.finish(Duration::from_secs(*timeout_secs), &stop);
            Ok(if left == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn from_daemon(config: &RoadrepConfig) -> anyhow::Result<Option<UplinkReport>> {
    let listen = &config.api.listen;
    let mut request =
        client::agent(Duration::from_secs(10)).get(format!("http://{listen}/api/uplink"));
    if let Some(auth) = client::authorization(config)? {
        request = request.header("Authorization", auth);
    }
    client::answer(listen, request.call())
}

fn open_store(config: &RoadrepConfig) -> anyhow::Result<Store> {
    let manifest = roadrep::models::ModelManifest::read(&config.models.clip)?;
    client::open_store(config, None, &manifest.fingerprint, manifest.clip.embed_dim)
}

fn print_report(r: &UplinkReport) {
    let link = match &r.link {
        LinkState::Connecting => "connecting".to_string(),
        LinkState::Connected { since } => format!("connected since {since}"),
        LinkState::Down { error, since } => format!("down since {since}: {error}"),
        LinkState::Stopped => "not running (no daemon)".to_string(),
    };
    let tls = if r.tls { " (TLS)" } else { "" };
    println!("vehicle {} -> broker {}{tls}: {link}", r.vehicle, r.broker);
    let o = &r.outbox;
    let age = r
        .oldest_unsent_secs
        .map_or(String::new(), |s| format!(", oldest unsent {s:.0} s old"));
    println!(
        "outbox: {} messages ({} frames), {:.1} MB{age}; {} frame messages dropped when full",
        o.depth,
        o.frames,
        o.bytes as f64 / 1e6,
        o.dropped
    );
    println!("sent since start: {}, reconnects: {}", r.sent, r.reconnects);
}

/// The publisher of a replay (or `uplink send`): runs beside it on its
/// own small runtime, and drains what it can at the end.
pub struct ReplayUplink {
    runtime: tokio::runtime::Runtime,
    running: RunningUplink,
}

impl ReplayUplink {
    /// Attaches the outbox to `store` and starts sending.
    pub fn start(
        config: &UplinkConfig,
        store: &mut Store,
        cameras: Vec<String>,
    ) -> anyhow::Result<Self> {
        let link = LinkBoard::new(config)?;
        store.attach_outbox(link.outbox().clone())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the uplink's runtime")?;
        let _enter = runtime.enter();
        let running = RunningUplink::start(
            link,
            Arc::new(store.clone()),
            roadrep::uplink::task::fixed_streams(cameras, "replaying"),
        );
        Ok(Self { runtime, running })
    }

    /// Sends for up to `timeout` more (less if `stop` is set), stops, and
    /// says what was sent and what waits. Returns the messages left.
    pub fn finish(self, timeout: Duration, stop: &AtomicBool) -> u64 {
        let link = self.running.link().clone();
        let waiting = link.depth();
        if waiting > 0 && !stop.load(Ordering::Relaxed) {
            eprintln!(
                "uplink: sending {waiting} messages to {} (up to {} s)",
                link.config().broker,
                timeout.as_secs()
            );
        }
        let timeout = if stop.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            timeout
        };
        let running = self.running;
        let (left, state) = self.runtime.block_on(async {
            let left = roadrep::uplink::publisher::drain(&link, timeout).await;
            let state = link.state();
            running.stop().await;
            (left, state)
        });
        let report = link.report(None);
        if left == 0 {
            eprintln!("uplink: {} messages sent, outbox empty", report.sent);
        } else {
            eprintln!(
                "uplink: {} messages sent, {left} wait in the outbox for the next run ({})",
                report.sent,
                match state {
                    LinkState::Down { error, .. } => format!("broker unreachable: {error}"),
                    _ => "time ran out".into(),
                }
            );
        }
        left
    }
}
