//! The fusion trainer: the candle model against the PyTorch references and
//! ONNX Runtime, and a synthetic rig task only fusion can solve.
//!
//! The task: front views in one of 4 colours, back views in one of 4 other
//! colours, half the rigs with a front-left view of a random colour (a
//! distractor); the caption names the front and back colours. The tiny CLIP
//! is random, so its caption embeddings are just 16 distinct targets: the
//! mean of the views and the front view alone cannot retrieve them, the
//! trained fusion model must learn which (front, back) pair goes with which.
//! Random targets cannot generalise to unseen pairs, so the held-out rigs
//! are the same 16 pairs drawn as other images (new pixel noise, other
//! distractors): what is measured is that fusion learned the pairs from
//! the views, not from the particular images.
#![cfg(feature = "trainer")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{Device, Tensor};
use roadrep::fuse::{FusionModel, FusionOptions};
use roadrep::models::{ClipModel, ClipOptions, ImagePrecision};
use roadrep::trainer::bench::COLOURS;
use roadrep::trainer::config::Schedule;
use roadrep::trainer::dataset::{OnBadRecord, split};
use roadrep::trainer::fusion::cache::EmbeddingCache;
use roadrep::trainer::fusion::data::{RigEmbeddings, embed_rigs, read_rigs};
use roadrep::trainer::fusion::dir::write_dir;
use roadrep::trainer::fusion::eval::{self, mean_rows};
use roadrep::trainer::fusion::train::{self, FusionTrainConfig};
use roadrep::trainer::fusion::{FusionConfig, FusionDir, RigFusion};
use roadrep::trainer::rng::SplitMix64;
use roadrep::trainer::train::RunOptions;

const PER_PAIR: usize = 6;

fn fusion_tiny() -> PathBuf {
    common::root().join("models/fusion-tiny")
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A 64×64 image of `rgb` with per-pixel noise.
fn noisy(rgb: [u8; 3], rng: &mut SplitMix64) -> image::RgbImage {
    image::RgbImage::from_fn(64, 64, |_, _| {
        image::Rgb(rgb.map(|c| (c as i32 + rng.below(41) as i32 - 20).clamp(0, 255) as u8))
    })
}

/// Writes the task's images and manifest into `dir`.
fn write_task(dir: &Path) -> PathBuf {
    let mut rng = SplitMix64::new(11);
    let mut lines = String::new();
    let (fronts, backs) = COLOURS.split_at(4);
    for (a, front) in fronts.iter().enumerate() {
        for (b, back) in backs.iter().enumerate() {
            for k in 0..PER_PAIR {
                let name = format!("r{a}{b}{k}");
                noisy(front.1, &mut rng)
                    .save(dir.join(format!("{name}_f.png")))
                    .unwrap();
                noisy(back.1, &mut rng)
                    .save(dir.join(format!("{name}_b.png")))
                    .unwrap();
                let mut views = format!("\"front\": \"{name}_f.png\", \"back\": \"{name}_b.png\"");
                if k % 2 == 0 {
                    let side = COLOURS[rng.below(COLOURS.len())].1;
                    noisy(side, &mut rng)
                        .save(dir.join(format!("{name}_l.png")))
                        .unwrap();
                    views.push_str(&format!(", \"front_left\": \"{name}_l.png\""));
                }
                lines.push_str(&format!(
                    "{{\"views\": {{{views}}}, \"caption\": \"front {} back {}\"}}\n",
                    front.0, back.0
                ));
            }
        }
    }
    let path = dir.join("rigs.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

fn load_clip() -> ClipModel {
    let options = ClipOptions {
        precision: ImagePrecision::Fp32,
        intra_threads: 2,
        load_text_encoder: true,
        verified_files_dir: None,
    };
    ClipModel::load(&common::tiny_model_dir(), &common::runtime(), &options).unwrap()
}

/// The task embedded once for every test of this file.
fn task() -> &'static (tempfile::TempDir, RigEmbeddings) {
    static TASK: OnceLock<(tempfile::TempDir, RigEmbeddings)> = OnceLock::new();
    TASK.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let manifest = write_task(dir.path());
        let roles = FusionConfig::tiny().roles;
        let records = read_rigs(&manifest, &roles).unwrap();
        let clip = load_clip();
        let cache_dir = dir.path().join("cache");
        let mut cache = EmbeddingCache::open(Some(&cache_dir), clip.fingerprint(), 32).unwrap();
        let data = embed_rigs(&clip, &records, &roles, &mut cache, OnBadRecord::Fail).unwrap();
        // A second pass is served from the file: same embeddings, no images read.
        let mut again = EmbeddingCache::open(Some(&cache_dir), clip.fingerprint(), 32).unwrap();
        assert_eq!(again.len(), cache.len());
        let cached = embed_rigs(&clip, &records, &roles, &mut again, OnBadRecord::Fail).unwrap();
        assert_eq!(cached, data);
        (dir, data)
    })
}

fn base_model() -> (FusionDir, RigFusion) {
    let dir = FusionDir::open(&fusion_tiny()).unwrap();
    let model = RigFusion::from_onnx(&dir.onnx, dir.config.clone(), &Device::Cpu).unwrap();
    (dir, model)
}

fn weights(m: &RigFusion) -> Vec<Vec<f32>> {
    m.named_vars()
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

#[test]
fn candle_matches_the_pytorch_references() {
    let text =
        std::fs::read_to_string(common::root().join("tests/fixtures/fusion-tiny/reference.json"))
            .unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (_, model) = base_model();
    let dir =
        FusionDir::open(&common::root().join("tests/fixtures/fusion-tiny/perturbed")).unwrap();
    let perturbed = RigFusion::from_onnx(&dir.onnx, dir.config.clone(), &Device::Cpu).unwrap();
    let rows = |v: &serde_json::Value| -> Vec<Vec<f32>> {
        serde_json::from_value::<Vec<Vec<f32>>>(v.clone()).unwrap()
    };
    let mut worst = 0f32;
    for case in r["cases"].as_array().unwrap() {
        let x: Vec<Vec<Vec<f32>>> =
            serde_json::from_value(case["view_embeddings"].clone()).unwrap();
        let m = rows(&case["view_present"]);
        let (b, v, d) = (x.len(), x[0].len(), x[0][0].len());
        let xt = Tensor::from_vec(
            x.into_iter().flatten().flatten().collect::<Vec<_>>(),
            (b, v, d),
            &Device::Cpu,
        )
        .unwrap();
        let mt = Tensor::from_vec(
            m.into_iter().flatten().collect::<Vec<_>>(),
            (b, v),
            &Device::Cpu,
        )
        .unwrap();
        for (model, key) in [(&model, "fused"), (&perturbed, "fused_perturbed")] {
            let got = model.forward(&xt, &mt).unwrap().to_vec2::<f32>().unwrap();
            worst = worst.max(max_diff(&got, &rows(&case[key])));
        }
    }
    eprintln!("candle vs PyTorch references: max diff {worst:.2e}");
    assert!(worst < 1e-5, "{worst}");
}

#[test]
fn written_model_runs_in_onnx_runtime_like_candle() {
    let (base, model) = base_model();
    // Every weight moved, the gate open.
    let mut rng = SplitMix64::new(5);
    for (name, var) in model.named_vars() {
        let t = var.as_tensor();
        let noise: Vec<f32> = (0..t.elem_count()).map(|_| rng.next_f32() - 0.5).collect();
        let noise = Tensor::from_vec(noise, t.shape(), &Device::Cpu).unwrap();
        model
            .set(&name, &(t + (noise * 0.3).unwrap()).unwrap())
            .unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let written = write_dir(&base, &model, out.path(), "fusion-test", "test").unwrap();
    assert_eq!(written.changed.len(), model.named_vars().len());
    let reopened = FusionDir::open(out.path()).unwrap();
    assert_eq!(reopened.clip_fingerprint(), base.clip_fingerprint());
    let err = reopened.check_clip("0123abcd").unwrap_err().to_string();
    assert!(
        err.contains("0123abcd") && err.contains(base.clip_fingerprint()),
        "{err}"
    );
    assert_eq!(reopened.manifest.fingerprint, written.fingerprint);
    assert_ne!(reopened.manifest.fingerprint, base.manifest.fingerprint);

    // The daemon's runner on the written directory, records with views missing.
    let daemon = FusionModel::open(out.path(), &FusionOptions::default()).unwrap();
    daemon.check_clip(base.clip_fingerprint()).unwrap();
    let c = &base.config;
    let b = 7;
    let x: Vec<f32> = (0..b * c.v * c.d).map(|_| rng.next_f32() - 0.5).collect();
    let m: Vec<f32> = (0..b * c.v)
        .map(|k| {
            let (i, r) = (k / c.v, k % c.v);
            f32::from(i == 0 || (i + r) % 3 != 0 || r == i % c.v)
        })
        .collect();
    let records: Vec<Vec<Option<&[f32]>>> = (0..b)
        .map(|i| {
            (0..c.v)
                .map(|r| {
                    let k = i * c.v + r;
                    (m[k] > 0.0).then(|| &x[k * c.d..(k + 1) * c.d])
                })
                .collect()
        })
        .collect();
    let ort_rows = daemon.fuse(&records).unwrap();
    let xt = Tensor::from_vec(x.clone(), (b, c.v, c.d), &Device::Cpu).unwrap();
    let mt = Tensor::from_vec(m.clone(), (b, c.v), &Device::Cpu).unwrap();
    let candle = model.forward(&xt, &mt).unwrap().to_vec2::<f32>().unwrap();
    let diff = max_diff(&candle, &ort_rows);
    eprintln!("FusionModel (ORT) on the written directory vs candle: max diff {diff:.2e}");
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn fusion_learns_what_the_mean_of_views_cannot() {
    let started = Instant::now();
    let (_, data) = task();
    let (_, model) = base_model();
    let cfg = FusionTrainConfig {
        schedule: Schedule {
            epochs: 40,
            learning_rate: 3e-3,
            warmup_steps: 10,
            val_fraction: 0.25,
            early_stopping_patience: 0,
            seed: 1,
            ..Default::default()
        },
        batch_size: 16,
        ..Default::default()
    };
    let (_, val) = split(data.len(), cfg.schedule.val_fraction, cfg.schedule.seed);
    // Untrained (gate 0): fusion is the normalised mean of the views.
    let before = eval::evaluate(&model, data, &val, None, 32).unwrap();
    let fused = eval::fused_rows(&model, data, &val, 32).unwrap();
    assert!(max_diff(&fused, &mean_rows(data, &val)) < 1e-5);
    assert_eq!(before.fused, before.mean);

    let out = tempfile::tempdir().unwrap();
    let outcome = train::train(
        &model,
        data,
        &cfg,
        14.285,
        out.path(),
        RunOptions::default(),
    )
    .unwrap();
    let after = eval::evaluate(&model, data, &val, None, 32).unwrap();
    eprintln!(
        "{} steps ({:.1} steps/s), {:.1} s in all\nbefore:\n{}after:\n{}",
        outcome.steps,
        outcome.steps_per_sec,
        started.elapsed().as_secs_f64(),
        eval::table(&before),
        eval::table(&after)
    );
    assert_eq!(outcome.split.1, val.len());
    assert!(after.fused.r1 >= after.mean.r1 + 0.2, "{after:?}");
    assert!(after.fused.r1 >= after.anchor.r1 + 0.2, "{after:?}");
    assert!(after.fused.r1 >= 0.6, "{after:?}");
    let gate = model.get("gate").unwrap().to_vec1::<f32>().unwrap()[0];
    assert!(gate.abs() > 0.1, "the gate stayed shut: {gate}");
}

#[test]
fn resumed_run_equals_an_uninterrupted_one() {
    let (_, data) = task();
    let cfg = FusionTrainConfig {
        schedule: Schedule {
            epochs: 3,
            val_fraction: 0.25,
            early_stopping_patience: 0,
            ..Default::default()
        },
        batch_size: 16,
        ..Default::default()
    };
    let whole = tempfile::tempdir().unwrap();
    let (_, a) = base_model();
    train::train(&a, data, &cfg, 14.285, whole.path(), RunOptions::default()).unwrap();

    let parts = tempfile::tempdir().unwrap();
    let (_, b) = base_model();
    let first = train::train(
        &b,
        data,
        &cfg,
        14.285,
        parts.path(),
        RunOptions {
            stop_after_steps: Some(7),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(first.interrupted);
    let (_, c) = base_model();
    let rest = train::train(
        &c,
        data,
        &cfg,
        14.285,
        parts.path(),
        RunOptions {
            resume: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!rest.interrupted);
    assert_eq!(max_diff(&weights(&a), &weights(&c)), 0.0);
}

#[test]
fn bad_lines_and_images_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let roles = FusionConfig::tiny().roles;
    let path = dir.path().join("rigs.jsonl");
    std::fs::write(&path, "{\"views\": {\"front\": \"a.png\"}, \"caption\": \"x\"}\n\n{\"views\": {\"roof\": \"a.png\"}, \"caption\": \"x\"}\n").unwrap();
    let err = read_rigs(&path, &roles).unwrap_err().to_string();
    assert!(err.contains("line 3") && err.contains("roof"), "{err}");

    std::fs::write(dir.path().join("bad.png"), b"not a png").unwrap();
    noisy([1, 2, 3], &mut SplitMix64::new(1))
        .save(dir.path().join("a.png"))
        .unwrap();
    std::fs::write(&path, "{\"views\": {\"front\": \"a.png\"}, \"caption\": \"x\"}\n{\"views\": {\"front\": \"a.png\", \"back\": \"bad.png\"}, \"caption\": \"y\"}\n{\"views\": {\"back\": \"missing.png\"}, \"caption\": \"z\"}\n").unwrap();
    let records = read_rigs(&path, &roles).unwrap();
    let clip = load_clip();
    let mut cache = EmbeddingCache::open(None, clip.fingerprint(), 32).unwrap();
    let err = embed_rigs(&clip, &records, &roles, &mut cache, OnBadRecord::Fail)
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2") && err.contains("bad.png"), "{err}");
    let data = embed_rigs(&clip, &records, &roles, &mut cache, OnBadRecord::Skip).unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data.skipped.len(), 2);
    assert!(data.skipped[1].contains("line 3") && data.skipped[1].contains("missing.png"));
}

/// `train-fusion` then `eval-fusion` on the written model, as a user runs them.
#[test]
fn cli_trains_then_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_task(dir.path());
    let out = dir.path().join("run");
    let cache = dir.path().join("cache");
    let trainer = env!("CARGO_BIN_EXE_trainer");
    let run = |args: &[String]| {
        let o = std::process::Command::new(trainer)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success(),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        stdout
    };
    let clip = common::tiny_model_dir();
    let (clip, fusion) = (clip.to_str().unwrap(), fusion_tiny());
    let common_args = |cmd: &'static str, fusion: &Path| -> Vec<String> {
        [
            cmd,
            "--log",
            "warn",
            "--clip",
            clip,
            "--fusion",
            fusion.to_str().unwrap(),
            "--data",
            manifest.to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
            "--val-fraction",
            "0.25",
            "--seed",
            "1",
        ]
        .map(String::from)
        .to_vec()
    };
    let mut train_args = common_args("train-fusion", &fusion);
    train_args.extend(
        [
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "40",
            "--batch-size",
            "16",
            "--lr",
            "3e-3",
            "--patience",
            "0",
            "--quiet",
        ]
        .map(String::from),
    );
    let printed = run(&train_args);
    assert!(printed.contains("model in"), "{printed}");
    let report = dir.path().join("eval.json");
    let mut eval_args = common_args("eval-fusion", &out.join("model"));
    eval_args.extend(["--report", report.to_str().unwrap()].map(String::from));
    let table = run(&eval_args);
    eprintln!("{table}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let r1 = |k: &str| r["metrics"][k]["r1"].as_f64().unwrap();
    assert!(r1("fused") >= r1("mean") + 0.2, "{table}");
    assert!(r1("fused") >= r1("anchor") + 0.2, "{table}");
    let written = FusionDir::open(&out.join("model")).unwrap();
    let base = FusionDir::open(&fusion).unwrap();
    assert_eq!(written.clip_fingerprint(), base.clip_fingerprint());
    // The daemon opens what the trainer wrote.
    FusionModel::open(&out.join("model"), &FusionOptions::default()).unwrap();
}
