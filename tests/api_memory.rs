//! Image uploads cannot exhaust the daemon's memory: bodies are read and
//! decoded only while holding one of `api::MAX_UPLOADS` slots, and query
//! images over `api::MAX_UPLOAD_PIXELS` are refused before they are
//! decoded. So 100 concurrent 31 MB uploads (the reliability probe reached
//! 2.5 GB with them) and a burst of the largest images allowed keep the
//! daemon's peak RSS within a few uploads of where it started.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

/// `VmHWM` (peak RSS) and `VmRSS` of a process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[test]
fn a_hundred_concurrent_large_uploads_keep_memory_bounded() {
    const UPLOADS: usize = 100;
    const BODY: usize = 31 << 20;
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = dir.path().join("roadrep.toml");
    std::fs::write(
        &config,
        format!(
            "[models]\nclip = \"{model}\"\nintra_threads = 1\n[tagging]\nlabels = \"{labels}\"\n\
             cache_dir = \"{cache}\"\n[store]\npath = \"{store}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n",
            model = common::tiny_model_dir().display(),
            labels = common::root().join("config/labels.toml").display(),
            cache = dir.path().display(),
            store = dir.path().join("store").display(),
        ),
    )
    .unwrap();
    let mut daemon = common::daemon(&config, dir.path()).spawn().unwrap();
    let agent = common::api_agent();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.get(format!("{base}/health")).call().is_err() {
        assert!(Instant::now() < deadline, "the daemon never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, before) = memory(daemon.id());

    // A PNG signature, then junk: each body is read whole, then refused.
    let mut body = vec![0x5au8; BODY];
    body[..8].copy_from_slice(b"\x89PNG\r\n\x1a\n");
    let body = Arc::new(body);
    let clients: Vec<_> = (0..UPLOADS)
        .map(|_| {
            let (agent, body, url) = (
                agent.clone(),
                body.clone(),
                format!("{base}/api/search/image"),
            );
            std::thread::spawn(move || {
                let mut r = agent.post(&url).send(&body[..]).unwrap();
                (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
            })
        })
        .collect();
    for c in clients {
        let (status, text) = c.join().unwrap();
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("request body"), "{text}");
    }
    let (after_bodies, _) = memory(daemon.id());
    // Peak RSS starts over from the current RSS (Linux: clear_refs 5).
    std::fs::write(format!("/proc/{}/clear_refs", daemon.id()), "5").unwrap();
    let (_, rss) = memory(daemon.id());

    // The largest images allowed (a few KB of PNG each, 7 bytes a pixel
    // once decoded: RGBA, then RGB), ten at once; one pixel row more is
    // refused before decoding.
    let png = |w: u32, h: u32| -> Arc<Vec<u8>> {
        let img = image::RgbaImage::from_pixel(w, h, image::Rgba([90, 120, 160, 255]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        Arc::new(out.into_inner())
    };
    let side = (roadrep::api::MAX_UPLOAD_PIXELS as f64).sqrt() as u32;
    let (largest, too_large) = (png(side, side), png(side, side + 1));
    let upload = |body: Arc<Vec<u8>>| {
        let (agent, url) = (agent.clone(), format!("{base}/api/search/image"));
        std::thread::spawn(move || {
            let mut r = agent.post(&url).send(&body[..]).unwrap();
            (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
        })
    };
    let (status, text) = upload(too_large).join().unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("larger than 25000000 pixels"), "{text}");
    let searches: Vec<_> = (0..10).map(|_| upload(largest.clone())).collect();
    for s in searches {
        let (status, text) = s.join().unwrap();
        assert_eq!(status, 200, "{text}");
    }
    let (peak, _) = memory(daemon.id());
    let _ = daemon.kill();
    let _ = daemon.wait();

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let slots = roadrep::api::MAX_UPLOADS as u64;
    let growth = after_bodies.saturating_sub(before);
    eprintln!(
        "{UPLOADS} concurrent {} MiB uploads: RSS {:.0} MiB before, peak {:.0} MiB (+{:.0} MiB)",
        BODY >> 20,
        mib(before),
        mib(after_bodies),
        mib(growth)
    );
    // At most MAX_UPLOADS bodies are held at once, each once; the rest is
    // the allocator keeping freed bodies in its per-thread arenas (glibc
    // raises its mmap threshold after freeing one). All 100 buffered
    // would be over 3 GB.
    let bound = (2 * slots + 4) * BODY as u64;
    assert!(
        growth < bound,
        "peak RSS grew {:.0} MiB with bodies, bound {:.0} MiB",
        mib(growth),
        mib(bound)
    );
    let growth = peak.saturating_sub(rss);
    eprintln!(
        "10 concurrent {side}x{side} PNG searches: RSS {:.0} MiB before, peak {:.0} MiB (+{:.0} MiB)",
        mib(rss),
        mib(peak),
        mib(growth)
    );
    let per_image = roadrep::api::MAX_UPLOAD_PIXELS * 7;
    let bound = slots * per_image + (64 << 20);
    assert!(
        growth < bound,
        "peak RSS grew {:.0} MiB with images, bound {:.0} MiB",
        mib(growth),
        mib(bound)
    );
}
