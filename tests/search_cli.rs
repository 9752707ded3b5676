//! `roadrep search` straight from the store, and through a running daemon
//! (which holds the store's lock, so only its API can answer).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn roadrep(args: &[&str], dir: &Path) -> Output {
    common::roadrep(args, &dir.join("cache"))
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn search_reads_the_store_or_asks_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    common::make_clip(&clip, 100, 25, 320, 240, "smpte");
    let store = dir.path().join("store");
    let store_s = store.to_str().unwrap();
    let o = roadrep(
        &[
            "replay",
            clip.to_str().unwrap(),
            "--camera",
            "dash",
            "--store",
            store_s,
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", err(&o));

    // No daemon: the CLI opens the store itself. The config points the API
    // at a port nobody listens on.
    let port = 20000 + std::process::id() % 20000;
    let config = dir.path().join("roadrep.toml");
    std::fs::write(
        &config,
        format!(
            "[models]\nclip = \"{}\"\n[tagging]\nlabels = \"{}\"\n[store]\npath = \"{store_s}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n",
            common::tiny_model_dir().display(),
            common::root().join("config/labels.toml").display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let o = roadrep(
        &[
            "-c", cfg, "search", "a road", "--camera", "dash", "--top", "3", "--json",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", err(&o));
    let direct: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let hits = direct["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 3);
    assert!(hits.iter().all(|h| h["camera"] == "dash"));
    let weather = hits[0]["tags"]["weather"][0].as_str().unwrap().to_string();
    let o = roadrep(
        &[
            "-c",
            cfg,
            "search",
            "a road",
            "--tag",
            &format!("weather={weather}"),
            "--json",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", err(&o));

    // Bad requests: one line naming the problem.
    let o = roadrep(
        &["-c", cfg, "search", "a road", "--camera", "side"],
        dir.path(),
    );
    assert!(!o.status.success());
    assert_eq!(err(&o).trim(), "error: unknown camera 'side'");
    let o = roadrep(
        &["-c", cfg, "search", "a road", "--tag", "foggy"],
        dir.path(),
    );
    assert!(
        err(&o).contains("tag 'foggy'") && err(&o).lines().count() == 1,
        "{}",
        err(&o)
    );

    // With the daemon running, the store is locked and the API answers.
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_roadrep"))
        .args(["-c", cfg, "run"])
        .current_dir(common::root())
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port as u16)).is_err() {
        assert!(Instant::now() < deadline, "daemon did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = roadrep(
        &[
            "-c", cfg, "search", "a road", "--camera", "dash", "--top", "3", "--json",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", err(&o));
    let via_api: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let key = |v: &serde_json::Value| {
        v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["time"].clone(), h["camera"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(key(&via_api), key(&direct), "API and store agree");
    let o = roadrep(
        &["-c", cfg, "search", "a road", "--camera", "side"],
        dir.path(),
    );
    assert_eq!(
        err(&o).trim(),
        "error: unknown camera 'side'",
        "API errors read the same"
    );

    // SIGTERM: clean shutdown, exit 0.
    let pid = daemon.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = daemon.wait().unwrap();
    assert!(status.success(), "daemon exit {status:?}");
}
