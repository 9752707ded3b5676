//! The reliability suite (issue 14 §2): replays and the daemon killed at
//! random points must end with the store an uninterrupted run gives, and a
//! table of bad inputs must each end in one error line, never a panic, with
//! an existing store left alone.
//!
//! `RELIABILITY_SEED=N` repeats the kill points of an earlier run (each run
//! prints its seed).

#[path = "reliability/bad_inputs.rs"]
mod bad_inputs;
mod common;
#[path = "reliability/kills.rs"]
mod kills;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use roadrep::models::ModelManifest;
use roadrep::store::Store;

/// Segmenter thresholds for the tiny random CLIP (as in config/roadrep.toml).
const SEGMENTS: &str =
    "cut_distance = 0.005\nkeep_distance = 0.003\nconfirm_secs = 1.0\nmin_segment_secs = 2.0";

/// The tests here run one at a time: each keeps both cores busy, and kill
/// points are times measured on an uninterrupted run.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A config file's text: `[section] key = value` lines, the defaults below
/// replaced (same section and key) or extended by `overrides`.
pub fn config_text(store: &Path, cache: &Path, overrides: &[(&str, &str)]) -> String {
    let (model, labels) = (
        common::tiny_model_dir(),
        common::root().join("config/labels.toml"),
    );
    let (model, labels) = (
        format!("clip = \"{}\"", model.display()),
        format!("labels = \"{}\"", labels.display()),
    );
    let cache = format!("cache_dir = \"{}\"", cache.display());
    let store = format!("path = \"{}\"", store.display());
    let mut lines: Vec<(&str, &str)> = vec![
        ("models", &model),
        ("models", "intra_threads = 1"),
        ("tagging", &labels),
        ("tagging", &cache),
        ("store", &store),
        ("api", "listen = \"127.0.0.1:0\""),
    ];
    lines.extend(SEGMENTS.lines().map(|l| ("segments", l)));
    let key = |l: &str| l.split('=').next().unwrap().trim().to_string();
    for &(section, line) in overrides {
        if section == "streams" {
            lines.push((section, line));
            continue;
        }
        match lines
            .iter_mut()
            .find(|(s, l)| *s == section && key(l) == key(line))
        {
            Some(slot) => slot.1 = line,
            None => lines.push((section, line)),
        }
    }
    let mut by_section: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (section, line) in lines {
        by_section.entry(section).or_default().push(line);
    }
    // `[[streams]]` entries come as whole tables under the section "streams".
    let streams = by_section.remove("streams").unwrap_or_default();
    let mut text: String = by_section
        .iter()
        .map(|(s, ls)| format!("[{s}]\n{}\n", ls.join("\n")))
        .collect();
    for s in streams {
        text.push_str(&format!("[[streams]]\n{s}\n"));
    }
    text
}

/// Writes `config_text` to `dir/name`.
pub fn write_config(dir: &Path, name: &str, store: &Path, overrides: &[(&str, &str)]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, config_text(store, &dir.join("cache"), overrides)).unwrap();
    path
}

/// `roadrep -c CONFIG ARGS...` from the repository root, nothing from the
/// environment but the onnxruntime path.
pub fn roadrep(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_roadrep"));
    c.arg("-c")
        .arg(config)
        .args(args)
        .current_dir(common::root())
        .env_remove("ROADREP_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("FAILPOINTS")
        .stdin(Stdio::null());
    c
}

/// Runs a command to its end, killing it after `limit` (a hang is a failure
/// the caller sees as a signal exit, not a test that never ends).
pub fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain the pipes on threads so a chatty child cannot block on them.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as _));
    let status = match wait_until(&mut child, Instant::now() + limit) {
        Some(status) => status,
        None => {
            child.kill().unwrap();
            child.wait().unwrap()
        }
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Polls the child until it exits or `deadline` passes.
pub fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Opens a store with the tiny model (the one every config here uses).
pub fn open_store(path: &Path) -> Store {
    let m = ModelManifest::read(&common::tiny_model_dir()).unwrap();
    Store::open(path, &m.fingerprint, m.clip.embed_dim).unwrap()
}

/// Every key and value of every sled tree of a store, counted and hashed
/// per tree: what "the store is untouched" means, byte for byte.
pub fn store_digest(path: &Path) -> BTreeMap<String, (usize, u64)> {
    // The process that just used it may still hold sled's lock for a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let db = loop {
        match sled::Config::new().path(path).open() {
            Ok(db) => break db,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("open {}: {e}", path.display()),
        }
    };
    db.tree_names()
        .into_iter()
        .map(|name| {
            let tree = db.open_tree(&name).unwrap();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            let mut n = 0;
            for kv in tree.iter() {
                let (k, v) = kv.unwrap();
                (k.as_ref(), v.as_ref()).hash(&mut h);
                n += 1;
            }
            (String::from_utf8_lossy(&name).into_owned(), (n, h.finish()))
        })
        .collect()
}

/// A small seeded generator (splitmix64): kill points a seed can repeat.
pub struct Rng(u64);

impl Rng {
    /// `RELIABILITY_SEED`, else one from the clock; printed either way.
    pub fn from_env(what: &str) -> Self {
        let seed = std::env::var("RELIABILITY_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{what}: seed {seed} (RELIABILITY_SEED={seed} repeats it)");
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub use common::scene_clip;
