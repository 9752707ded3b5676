//! `roadrep`: the daemon and its command-line tools.

mod commands;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use commands::cli::{self, Cli, Command, LogFormat};

fn main() -> ExitCode {
    limit_malloc_arenas();
    // `FAILPOINTS=name=action` (test builds with the "failpoints" feature
    // only; release builds never read it).
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    let cli = Cli::parse();
    // Long-running servers keep Rust's default (see restore_sigpipe).
    let serving = matches!(
        cli.command,
        Command::Run
            | Command::Fleet(
                commands::cli_fleet::FleetCommand::Ingest(_)
                    | commands::cli_fleet::FleetCommand::Serve
            )
    );
    if !serving {
        restore_sigpipe();
    }
    init_logging(cli.log_format, cli.verbose);
    let result = match &cli.command {
        Command::Run => commands::run::run(cli.config.as_deref()),
        Command::Search(args) => commands::search::run(cli.config.as_deref(), args),
        Command::Tag(args) => commands::tag::run(cli.config.as_deref(), args),
        Command::Caption(args) => commands::caption::run(cli.config.as_deref(), args),
        Command::Bench(cli::BenchCommand::Clip(args)) => {
            commands::bench::run_clip(cli.config.as_deref(), args)
        }
        Command::Bench(cli::BenchCommand::Replay(args)) => {
            commands::bench::run_replay(cli.config.as_deref(), args)
        }
        Command::Bench(cli::BenchCommand::Caption(args)) => {
            commands::bench::run_caption(cli.config.as_deref(), args)
        }
        Command::Bench(cli::BenchCommand::Search(args)) => {
            commands::bench::run_search(cli.config.as_deref(), args)
        }
        Command::Bench(cli::BenchCommand::Precision(args)) => {
            commands::bench::run_precision(cli.config.as_deref(), args)
        }
        Command::Bench(cli::BenchCommand::Rig(args)) => {
            commands::bench::run_rig(cli.config.as_deref(), args)
        }
        Command::Bench(cli::BenchCommand::Fleet(args)) => {
            commands::fleet::run_bench(cli.config.as_deref(), args)
        }
        Command::Fleet(command) => commands::fleet::run(cli.config.as_deref(), command),
        Command::Bench(cli::BenchCommand::Uplink(args)) => {
            commands::bench::run_uplink(cli.config.as_deref(), args)
        }
        Command::Replay(args) => commands::replay::run(cli.config.as_deref(), args),
        Command::Segments(args) => commands::segments::run(
            cli.config.as_deref(),
            args,
            commands::segments::Style::Table,
        ),
        Command::Summary(args) => commands::segments::run(
            cli.config.as_deref(),
            args,
            commands::segments::Style::Summary,
        ),
        Command::ExportFrames(args) => commands::export::run(cli.config.as_deref(), args),
        Command::Uplink(args) => commands::uplink::run(cli.config.as_deref(), args),
        Command::VerifyModel { dir } => commands::verify_model(dir),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            // `{:#}` joins the context chain on one line.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that contends for the heap an arena of its own
/// (up to 8 per core), and memory freed in one is not reused by the others:
/// with ORT's, GStreamer's and the pipeline's threads that held 30-55 MB
/// more at the same speed (`BENCHMARKS.md`, peak RSS). Two arenas, unless
/// `MALLOC_ARENA_MAX` says otherwise.
///
/// Blocks of 4 MiB and more (batch tensors, ONNX Runtime's buffers) are
/// mapped and unmapped on their own instead of coming from the heap, where
/// glibc's sliding threshold (it rises to the largest block freed) lets
/// them fragment it: 10-50 MB less peak and a steadier one at the same CPU
/// time; a lower threshold saves more but maps each decoded frame (more
/// CPU). Unless `MALLOC_MMAP_THRESHOLD_` says otherwise. Runs before any
/// thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 4 << 20;
        // SAFETY: mallopt only sets allocator parameters; no thread runs yet.
        unsafe {
            if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
            if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            }
        }
    }
}

/// One-shot commands end quietly when their reader goes away (`roadrep
/// search --json | head`), as Unix tools do, instead of panicking in
/// `println!` on EPIPE. The daemon keeps Rust's default (SIGPIPE ignored),
/// so a client that hangs up is an error on its socket, not a kill.
fn restore_sigpipe() {
    // SAFETY: resetting a signal disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_logging(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,ort=warn",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
