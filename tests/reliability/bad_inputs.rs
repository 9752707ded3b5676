//! The bad-input table: each row one input roadrep may meet, and what must
//! happen. A bad one ends in exit 1 and one `error:` line naming it, never
//! a panic, with the store it was pointed at left byte for byte as it was;
//! an odd but valid one (1x1, 4000x3000, CMYK, 16-bit, grey) is stored or
//! tagged like any other.

use std::path::Path;
use std::time::Duration;

use crate::{open_store, output_within, roadrep, store_digest, write_config};

/// What a row runs.
enum Input {
    /// `roadrep replay FILE --camera cam --fps 2` into the store (a file the
    /// maker writes, named as given).
    Video(&'static str, fn(&Fx, &Path)),
    /// `roadrep replay` of the good clip under a config with these lines.
    Config(Vec<(&'static str, String)>),
    /// `roadrep -c FILE replay` with a config file of these bytes (none:
    /// no such file).
    ConfigFile(&'static str, Option<&'static [u8]>),
    /// `roadrep replay` of the good clip with a labels file of this text.
    Labels(&'static str, &'static str),
    /// `roadrep replay` of the good clip with these arguments added.
    Args(&'static [&'static str]),
    /// `roadrep tag IMAGE` and `roadrep search --image IMAGE`.
    Image(&'static str, fn(&Fx, &Path)),
    /// `roadrep run` with these config lines: it must stop at once.
    Daemon(Vec<(&'static str, String)>),
}

/// What must come of it.
enum Outcome {
    /// Exit 1, one `error:` line holding all of these.
    Fails(&'static [&'static str]),
    /// Exit 0, this many frames of this size stored (in a store of its own).
    Stored(usize, u32, u32),
    /// Exit 0, tagged and searchable; with a reference image of the same
    /// pixels in plain 8-bit RGB, tagged exactly as that one.
    Tagged(Option<fn(&Fx, &Path)>),
}

#[path = "inputs.rs"]
mod inputs;
use inputs::*;

const DUP_CLASS: &str =
    "[w]\ntemplates = [\"a {}.\"]\n[w.classes]\nsun = [\"sun\"]\nsun = [\"sunny\"]\n";
const NO_PLACEHOLDER: &str =
    "[w]\ntemplates = [\"a road\"]\n[w.classes]\na = [\"a\"]\nb = [\"b\"]\n";
const ONE_CLASS: &str = "[w]\ntemplates = [\"a {}.\"]\n[w.classes]\na = [\"a\"]\n";

/// The table: (input, what roadrep gets, what must come of it).
#[rustfmt::skip]
fn table() -> Vec<(&'static str, Input, Outcome)> {
    use Input::*;
    use Outcome::*;
    let cfg = |section, line: &str| Config(vec![(section, line.to_string())]);
    let run = |section, line: &str| Daemon(vec![(section, line.to_string())]);
    vec![
        ("zero-byte file", Video("zero.mp4", zero), Fails(&["zero.mp4", "no data"])),
        ("random bytes", Video("random.mp4", random), Fails(&["random.mp4", "type of stream"])),
        ("first 30% of an MP4 (index at the end)", Video("cut.mp4", cut_mp4), Fails(&["cut.mp4", "no playable streams"])),
        ("audio-only MP4", Video("audio.mp4", audio_mp4), Fails(&["audio.mp4", "no video stream"])),
        ("PNG renamed .mp4", Video("png.mp4", png), Fails(&["png.mp4", "is a PNG image"])),
        ("JPEG renamed .mp4", Video("jpeg.mp4", jpeg), Fails(&["jpeg.mp4", "is a JPEG image"])),
        ("unknown video codec (fourcc patched)", Video("codec.mp4", unknown_codec), Fails(&["codec.mp4", "No decoder available for type 'video/x-gst-fourcc-zzzz"])),
        ("HTML page saved as .mp4", Video("page.mp4", html), Fails(&["page.mp4", "No decoder available for type 'text/html'"])),
        ("gzip archive as .mp4", Video("gz.mp4", gzip), Fails(&["gz.mp4", "No decoder available for type 'application/x-gzip'"])),
        ("a directory", Video("dir.mp4", directory), Fails(&["dir.mp4", "not a regular file"])),
        ("a named pipe (a reader would block)", Video("fifo.mp4", fifo), Fails(&["fifo.mp4", "not a regular file"])),
        ("nonexistent path", Video("missing.mp4", nothing), Fails(&["missing.mp4", "No such file"])),
        ("a path through a file", Video("clip.mp4/x.mp4", nothing), Fails(&["x.mp4", "Not a directory"])),
        ("unreadable file (chmod 000)", Video("locked.mp4", locked), Fails(&["locked.mp4", "Permission denied"])),
        ("1x1 video", Video("one.mkv", one_by_one), Stored(1, 1, 1)),
        ("333x201 video (rows not 4-byte aligned)", Video("odd.mkv", odd_size), Stored(3, 333, 201)),
        ("4000x3000 video", Video("big.mp4", huge_video), Stored(2, 4000, 3000)),
        ("ingest.sample_fps = -1", cfg("ingest", "sample_fps = -1.0"), Fails(&["ingest.sample_fps -1", "roadrep.toml"])),
        ("ingest.sample_fps = 0", cfg("ingest", "sample_fps = 0.0"), Fails(&["ingest.sample_fps 0"])),
        ("ingest.sample_fps = nan", cfg("ingest", "sample_fps = nan"), Fails(&["ingest.sample_fps NaN"])),
        ("unknown key", cfg("ingest", "sample_rate = 2"), Fails(&["unknown field `sample_rate`"])),
        ("ingest.decode unknown", cfg("ingest", "decode = \"slow\""), Fails(&["unknown variant `slow`", "exact", "roadrep.toml"])),
        ("unknown section", cfg("modles", "clip = \"x\""), Fails(&["unknown field `modles`"])),
        ("models.intra_threads = 100000", cfg("models", "intra_threads = 100000"), Fails(&["models.intra_threads 100000"])),
        ("models.intra_threads of the wrong type", cfg("models", "intra_threads = \"two\""), Fails(&["intra_threads", "roadrep.toml"])),
        ("batcher.max_frames = 0", cfg("batcher", "max_frames = 0"), Fails(&["batcher.max_frames"])),
        ("store.keyframe_width = 100000", cfg("store", "keyframe_width = 100000"), Fails(&["store.keyframe_width 100000", "0..=1920"])),
        ("segments.keep_distance > cut_distance", cfg("segments", "keep_distance = 0.01"), Fails(&["segments.keep_distance"])),
        ("api.listen not an address", cfg("api", "listen = \"nonsense\""), Fails(&["api.listen 'nonsense'", "host:port"])),
        ("missing model directory", cfg("models", "clip = \"/nonexistent/clip-tiny\""), Fails(&["/nonexistent/clip-tiny"])),
        ("model directory missing a file", cfg("models", "clip = \"{dir}/no-encoder\""), Fails(&["image_encoder.onnx", "missing"])),
        ("model file corrupt (sha256)", cfg("models", "clip = \"{dir}/bad-encoder\""), Fails(&["image_encoder.onnx", "does not match its manifest"])),
        ("missing onnxruntime library", cfg("models", "ort_library = \"/nonexistent/ort.so\""), Fails(&["/nonexistent/ort.so"])),
        ("missing caption model", cfg("captions", "model = \"/nonexistent/blip\""), Fails(&["captions", "/nonexistent/blip"])),
        ("config not TOML", ConfigFile("binary.toml", Some(b"\x00\x01\xffPK\x03\x04")), Fails(&["binary.toml"])),
        ("config file missing", ConfigFile("absent.toml", None), Fails(&["absent.toml", "No such file"])),
        ("--fps=-2", Args(&["--fps=-2"]), Fails(&["--fps"])),
        ("--fps 0", Args(&["--fps", "0"]), Fails(&["--fps"])),
        ("--start not a time", Args(&["--start", "yesterday"]), Fails(&["--start", "yesterday"])),
        ("--store a regular file", Args(&["--store", "{dir}/store-file"]), Fails(&["store-file", "Not a directory"])),
        ("empty labels file", Labels("empty.toml", ""), Fails(&["empty.toml", "no label sets"])),
        ("duplicate class", Labels("dup.toml", DUP_CLASS), Fails(&["dup.toml", "duplicate key"])),
        ("labels not TOML", Labels("broken.toml", "[weather\ntemplates = "), Fails(&["broken.toml"])),
        ("template without {}", Labels("tpl.toml", NO_PLACEHOLDER), Fails(&["tpl.toml", "exactly one {}"])),
        ("label set with one class", Labels("one.toml", ONE_CLASS), Fails(&["one.toml", "at least two classes"])),
        ("run: api.listen beyond loopback, no token", run("api", "listen = \"0.0.0.0:0\""), Fails(&["api.listen '0.0.0.0:0'", "token_file"])),
        ("run: api.listen port in use", run("api", "listen = \"127.0.0.1:{busy}\""), Fails(&["127.0.0.1:{busy}"])),
        ("run: a stream's sample_fps = 0", run("streams", "name = \"cam\"\nsource = \"/dev/null\"\nsample_fps = 0.0"), Fails(&["streams[0]", "sample_fps 0"])),
        ("PNG header claiming 100000x100000", Image("huge.png", huge_png), Fails(&["huge.png"])),
        ("truncated PNG", Image("cut.png", cut_png), Fails(&["cut.png", "cannot decode PNG"])),
        ("zero-byte image", Image("empty.jpg", zero), Fails(&["empty.jpg"])),
        ("text file as image", Image("notes.png", text), Fails(&["notes.png", "not an image"])),
        ("CMYK (YCCK) JPEG", Image("cmyk.jpg", cmyk_jpeg), Tagged(None)),
        ("16-bit PNG", Image("deep.png", deep_png), Tagged(Some(grey_as_rgb))),
        ("grayscale PNG", Image("grey.png", grey_png), Tagged(Some(grey_as_rgb))),
        ("RGBA PNG (alpha 255)", Image("alpha.png", rgba_png), Tagged(Some(rgb_png))),
        ("1x1 PNG", Image("dot.png", dot_png), Tagged(None)),
    ]
}

fn error_lines(o: &std::process::Output) -> Vec<String> {
    let err = String::from_utf8_lossy(&o.stderr);
    err.lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_string)
        .collect()
}

/// Exit status and stderr as the row's outcome wants them.
fn check_output(o: &std::process::Output, fails: Option<Vec<String>>) -> Result<(), String> {
    let err = String::from_utf8_lossy(&o.stderr);
    let errors = error_lines(o);
    if err.contains("panicked") {
        return Err(format!("panicked: {err}"));
    }
    match fails {
        Some(needles) => {
            let named = errors.len() == 1 && needles.iter().all(|n| errors[0].contains(n.as_str()));
            if o.status.code() != Some(1) || !named {
                return Err(format!(
                    "want exit 1 and one error line with {needles:?}; got {:?}: {err}",
                    o.status
                ));
            }
        }
        None if o.status.code() != Some(0) || !errors.is_empty() => {
            return Err(format!(
                "want exit 0 and no error; got {:?}: {err}",
                o.status
            ));
        }
        None => {}
    }
    Ok(())
}

fn json(o: &std::process::Output) -> Result<serde_json::Value, String> {
    serde_json::from_slice(&o.stdout).map_err(|e| format!("stdout is not JSON ({e})"))
}

/// Runs one row; the store at `store` must be as `before` afterwards.
fn run_row(
    fx: &Fx,
    i: usize,
    input: &Input,
    outcome: &Outcome,
    good: &Path,
    store: &Path,
) -> Result<(), String> {
    let limit = Duration::from_secs(60);
    let fails = match outcome {
        Outcome::Fails(needles) => Some(needles.iter().map(|n| fx.subst(n)).collect()),
        _ => None,
    };
    let row_dir = fx.dir.join(format!("row{i}"));
    std::fs::create_dir_all(&row_dir).unwrap();
    let (clip, store_s) = (fx.clip.to_str().unwrap(), store.to_str().unwrap());
    let replay = |config: &Path, extra: &[&str]| {
        let mut args = vec!["replay", clip, "--camera", "cam"];
        // A row's own --fps or --store replaces the usual one.
        for (flag, value) in [("--fps", "2"), ("--store", store_s)] {
            if !extra.iter().any(|a| a.starts_with(flag)) {
                args.extend([flag, value]);
            }
        }
        args.extend(extra);
        output_within(roadrep(config, &args), limit)
    };
    let with_lines = |lines: &[(&'static str, String)]| {
        let lines: Vec<(&str, String)> = lines.iter().map(|(s, l)| (*s, fx.subst(l))).collect();
        let lines: Vec<(&str, &str)> = lines.iter().map(|(s, l)| (*s, l.as_str())).collect();
        write_config(&row_dir, "roadrep.toml", store, &lines)
    };
    match input {
        Input::Video(name, make) => {
            let file = fx.dir.join(name);
            make(fx, &file);
            let own = row_dir.join("store");
            let target = if fails.is_some() { store } else { &own };
            let args = [
                "replay",
                file.to_str().unwrap(),
                "--camera",
                "cam",
                "--fps",
                "2",
                "--store",
                target.to_str().unwrap(),
            ];
            check_output(&output_within(roadrep(good, &args), limit), fails)?;
            if let Outcome::Stored(n, w, h) = outcome {
                let frames = open_store(&own)
                    .frames(&Default::default(), usize::MAX)
                    .unwrap();
                let got: Vec<_> = frames
                    .iter()
                    .map(|f| (f.record.width, f.record.height, f.tags.len()))
                    .collect();
                if got != vec![(*w, *h, 4); *n] {
                    return Err(format!(
                        "want {n} frames {w}x{h} with 4 tag sets, got {got:?}"
                    ));
                }
            }
        }
        Input::Config(lines) => check_output(&replay(&with_lines(lines), &[]), fails)?,
        Input::Daemon(lines) => {
            let o = output_within(
                roadrep(&with_lines(lines), &["run"]),
                Duration::from_secs(30),
            );
            check_output(&o, fails)?
        }
        Input::ConfigFile(name, bytes) => {
            let config = row_dir.join(name);
            if let Some(b) = bytes {
                std::fs::write(&config, b).unwrap();
            }
            check_output(&replay(&config, &[]), fails)?
        }
        Input::Labels(name, text) => {
            let labels = row_dir.join(name);
            std::fs::write(&labels, text).unwrap();
            let line = format!("labels = \"{}\"", labels.display());
            check_output(&replay(&with_lines(&[("tagging", line)]), &[]), fails)?
        }
        Input::Args(extra) => {
            let extra: Vec<String> = extra.iter().map(|a| fx.subst(a)).collect();
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            check_output(&replay(good, &extra), fails)?
        }
        Input::Image(name, make) => {
            let file = fx.dir.join(name);
            make(fx, &file);
            let tag = |f: &Path| {
                output_within(
                    roadrep(good, &["tag", "--json", f.to_str().unwrap()]),
                    limit,
                )
            };
            let tagged = tag(&file);
            check_output(&tagged, fails.clone())?;
            let search = [
                "search",
                "--json",
                "--store",
                store_s,
                "--top",
                "3",
                "--image",
                file.to_str().unwrap(),
            ];
            let found = output_within(roadrep(good, &search), limit);
            check_output(&found, fails.clone())?;
            if let Outcome::Tagged(reference) = outcome {
                let tags = json(&tagged)?[0]["tags"].clone();
                if tags.as_object().map(|t| t.len()) != Some(4) {
                    return Err(format!("want 4 tag sets, got {tags}"));
                }
                if json(&found)?["hits"]
                    .as_array()
                    .is_none_or(|h| h.len() != 3)
                {
                    return Err("want 3 search hits".into());
                }
                if let Some(make_ref) = reference {
                    let ref_file = row_dir.join("reference.png");
                    make_ref(fx, &ref_file);
                    let want = json(&tag(&ref_file))?[0]["tags"].clone();
                    if tags != want {
                        return Err(format!(
                            "tagged {tags}, the same pixels in 8-bit RGB {want}"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn every_bad_input_fails_alone_in_one_line_and_leaves_the_store_alone() {
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let clip = dir.join("clip.mp4");
    crate::common::make_clip(&clip, 50, 25, 160, 120, "smpte");
    // Held for the whole table: the "port in use" row.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fx = Fx {
        dir: dir.clone(),
        clip: clip.clone(),
        busy_port: busy.local_addr().unwrap().port(),
    };
    let tiny = crate::common::tiny_model_dir();
    for (name, broken) in [
        ("no-encoder", None),
        ("bad-encoder", Some(&b"not onnx"[..])),
    ] {
        crate::common::copy_dir(&tiny, &dir.join(name));
        let encoder = dir.join(name).join("image_encoder.onnx");
        match broken {
            Some(b) => std::fs::write(encoder, b).unwrap(),
            None => std::fs::remove_file(encoder).unwrap(),
        }
    }
    std::fs::write(dir.join("store-file"), "not a store").unwrap();

    // The store every bad input is pointed at: the clip replayed once.
    let store = dir.join("store");
    let good = write_config(&dir, "roadrep.toml", &store, &[]);
    let args = [
        "replay",
        clip.to_str().unwrap(),
        "--camera",
        "cam",
        "--fps",
        "2",
        "--store",
        store.to_str().unwrap(),
    ];
    let o = output_within(roadrep(&good, &args), Duration::from_secs(120));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        open_store(&store).stats().unwrap().frames,
        vec![("cam".into(), 4)]
    );
    let before = store_digest(&store);

    let root = unsafe { libc::geteuid() } == 0;
    let rows = table();
    assert!(rows.len() >= 30, "{} rows", rows.len());
    let mut failed = Vec::new();
    for (i, (what, input, outcome)) in rows.iter().enumerate() {
        if root && what.contains("chmod 000") {
            // Root reads a chmod 000 file all the same: nothing to test.
            eprintln!("row {i} '{what}': skipped, running as root");
            continue;
        }
        let mut result = run_row(&fx, i, input, outcome, &good, &store);
        if result.is_ok() && store_digest(&store) != before {
            result = Err("the store changed".into());
        }
        eprintln!(
            "row {i} '{what}': {}",
            result.as_ref().map_or("FAILED", |_| "ok")
        );
        if let Err(e) = result {
            failed.push(format!("row {i} '{what}': {e}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} rows failed:\n{}",
        failed.len(),
        rows.len(),
        failed.join("\n")
    );
    // The digest does see a change: the clip replayed as another camera.
    let mut args = args;
    args[3] = "control";
    assert!(
        output_within(roadrep(&good, &args), Duration::from_secs(120))
            .status
            .success()
    );
    assert_ne!(
        store_digest(&store),
        before,
        "a replay must change the digest"
    );
}
