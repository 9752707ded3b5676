//! Training on a synthetic task generated here: coloured squares captioned
//! "a photo of a red square". The tiny model is random, so before training
//! its retrieval is near chance; LoRA must lift recall@1 and zero-shot
//! accuracy clearly. Also: resuming from a checkpoint reproduces an
//! uninterrupted run, and the CLI runs end to end.
#![cfg(feature = "trainer")]

mod common;

use std::path::Path;

use candle_core::Device;
use roadrep::models::ModelManifest;
use roadrep::tagging::LabelSets;
use roadrep::trainer::bench::COLOURS;
use roadrep::trainer::clip::CandleClip;
use roadrep::trainer::config::{Schedule, TrainConfig};
use roadrep::trainer::dataset::{self, LoadedDataset, OnBadRecord};
use roadrep::trainer::eval;
use roadrep::trainer::lora::LoraAdapter;
use roadrep::trainer::rng::SplitMix64;
use roadrep::trainer::tokens::ClipTokenizer;
use roadrep::trainer::train::{self, Batcher, RunOptions};

const PER_COLOUR: usize = 6;

/// Squares of each colour at jittered sizes and positions on grey, with a
/// JSONL manifest and a label file for the `color` set.
fn write_task(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut rng = SplitMix64::new(42);
    let mut manifest = String::new();
    for (name, rgb) in COLOURS {
        for k in 0..PER_COLOUR {
            let mut img = image::RgbImage::from_pixel(96, 96, image::Rgb([128, 128, 128]));
            let side = 40 + rng.below(40) as u32;
            let (x0, y0) = (
                rng.below((96 - side) as usize + 1) as u32,
                rng.below((96 - side) as usize + 1) as u32,
            );
            for y in y0..y0 + side {
                for x in x0..x0 + side {
                    img.put_pixel(x, y, image::Rgb(rgb));
                }
            }
            let file = format!("{name}_{k}.png");
            img.save(dir.join(&file)).unwrap();
            manifest.push_str(&format!(
                "{{\"image\": \"{file}\", \"caption\": \"a photo of a {name} square\", \"labels\": {{\"color\": \"{name}\"}}}}\n"
            ));
        }
    }
    let data = dir.join("train.jsonl");
    std::fs::write(&data, manifest).unwrap();
    let mut labels = String::from(
        "[color]\ntemplates = [\"a photo of a {} square\", \"a {} square\"]\n[color.classes]\n",
    );
    for (name, _) in COLOURS {
        labels.push_str(&format!("{name} = [\"{name}\"]\n"));
    }
    let labels_path = dir.join("labels.toml");
    std::fs::write(&labels_path, labels).unwrap();
    (data, labels_path)
}

struct Setup {
    clip: CandleClip,
    tokenizer: ClipTokenizer,
    pre: roadrep::models::ImagePreprocessor,
    data: LoadedDataset,
    labels: LabelSets,
}

fn setup(dir: &Path) -> Setup {
    let model = common::tiny_model_dir();
    let (data_path, labels_path) = write_task(dir);
    let manifest = ModelManifest::read_verified(&model).unwrap();
    let pre = manifest.image_preprocessor(&model).unwrap();
    let samples = dataset::read_samples(&data_path, Default::default(), None, &[]).unwrap();
    Setup {
        clip: CandleClip::load(&model, &Device::Cpu).unwrap(),
        tokenizer: ClipTokenizer::from_model_dir(&model, &manifest).unwrap(),
        data: dataset::load_images(samples, &pre, OnBadRecord::Fail).unwrap(),
        pre,
        labels: LabelSets::from_file(&labels_path).unwrap(),
    }
}

fn config() -> TrainConfig {
    TrainConfig {
        schedule: Schedule {
            epochs: 25,
            learning_rate: 1e-2,
            warmup_steps: 5,
            weight_decay: 0.0,
            val_fraction: 0.25,
            early_stopping_patience: 0,
            seed: 3,
            ..Default::default()
        },
        batch_size: 16,
        ..Default::default()
    }
}

fn metrics(s: &Setup, adapter: Option<&LoraAdapter>) -> eval::Metrics {
    let batcher = Batcher::new(&s.data, &s.tokenizer, s.pre.clone(), &Device::Cpu).unwrap();
    let labels: Vec<_> = s.data.samples.iter().map(|x| &x.labels).collect();
    eval::evaluate(
        &s.clip,
        adapter,
        &s.tokenizer,
        &batcher,
        &labels,
        Some(&s.labels),
        32,
    )
    .unwrap()
}

#[test]
fn lora_training_learns_the_synthetic_task() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path());
    let before = metrics(&s, None);
    let out = dir.path().join("run");
    let (adapter, outcome) = train::train(
        &s.clip,
        &s.tokenizer,
        &s.pre,
        &s.data,
        &config(),
        &out,
        RunOptions::default(),
    )
    .unwrap();
    let after = metrics(&s, Some(&adapter));
    eprintln!(
        "before: {before:?}\nafter: {after:?}\nsteps {} ({:.1}/s)",
        outcome.steps, outcome.steps_per_sec
    );
    let (zb, za) = (
        before.zero_shot["color"].accuracy,
        after.zero_shot["color"].accuracy,
    );
    assert!(
        after.image_to_text.r1 >= 0.75 && after.image_to_text.r1 >= before.image_to_text.r1 + 0.3,
        "i2t R@1 {} -> {}",
        before.image_to_text.r1,
        after.image_to_text.r1
    );
    assert!(after.text_to_image.r1 >= before.text_to_image.r1, "t2i R@1");
    assert!(za >= 0.75 && za >= zb + 0.3, "zero-shot {zb} -> {za}");
    assert!(after.matched_cosine_mean > before.matched_cosine_mean);
    // The loss went down and the outputs of a run are there.
    let first = outcome.history.first().unwrap().train_loss;
    let last = outcome.history.last().unwrap();
    assert!(
        last.train_loss < first * 0.7,
        "{first} -> {}",
        last.train_loss
    );
    assert!(outcome.best_val_loss.is_some());
    for f in [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "checkpoint/state.json",
        "history.json",
        "train_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
}

#[test]
fn resumed_run_matches_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path());
    let cfg = TrainConfig {
        schedule: Schedule {
            epochs: 4,
            ..config().schedule
        },
        lora: roadrep::trainer::lora::LoraConfig {
            lora_dropout: 0.1,
            ..Default::default()
        },
        grad_accum_steps: 2,
        checkpoint_every_steps: 0,
        ..config()
    };
    let full = dir.path().join("full");
    let (a, oa) = train::train(
        &s.clip,
        &s.tokenizer,
        &s.pre,
        &s.data,
        &cfg,
        &full,
        RunOptions::default(),
    )
    .unwrap();
    let split = dir.path().join("split");
    let first = RunOptions {
        // 2 steps per epoch (3 batches, 2 per step): this stops inside the
        // second epoch, where only the forced checkpoint exists.
        stop_after_steps: Some(3),
        ..Default::default()
    };
    let (_, o1) =
        train::train(&s.clip, &s.tokenizer, &s.pre, &s.data, &cfg, &split, first).unwrap();
    assert!(o1.interrupted);
    assert_eq!((o1.steps, o1.epochs), (3, 1));
    let resume = RunOptions {
        resume: true,
        ..Default::default()
    };
    let (b, ob) =
        train::train(&s.clip, &s.tokenizer, &s.pre, &s.data, &cfg, &split, resume).unwrap();
    assert_eq!(oa.steps, ob.steps);
    assert_eq!(oa.history.len(), ob.history.len());
    for ((na, va), (nb, vb)) in a.named_vars().iter().zip(b.named_vars()) {
        assert_eq!(*na, nb);
        let d = (va.as_tensor() - vb.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "{na}: {d}");
    }
}

#[test]
fn cli_trains_merges_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let (data, labels) = write_task(dir.path());
    let model = common::tiny_model_dir();
    let out = dir.path().join("run");
    let exe = env!("CARGO_BIN_EXE_trainer");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(exe).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    let m = model.to_str().unwrap();
    let listing = run(&["inspect", "--model", m]);
    assert_eq!(
        listing.lines().filter(|l| l.starts_with("LoRA")).count(),
        16,
        "{listing}"
    );
    assert!(listing.contains("vision_model.encoder.layers.0.self_attn.q_proj.weight [32, 32]"));
    let o = out.to_str().unwrap();
    run(&[
        "train",
        "--model",
        m,
        "--data",
        data.to_str().unwrap(),
        "--out",
        o,
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--merge",
        "--quiet",
    ]);
    assert!(out.join("model/manifest.toml").is_file());
    assert!(out.join("loss.svg").is_file());
    // The daemon loads the merged directory (manifest verified).
    let options = roadrep::models::ClipOptions {
        intra_threads: 1,
        ..Default::default()
    };
    roadrep::models::ClipModel::load(&out.join("model"), &common::runtime(), &options).unwrap();
    let report = dir.path().join("eval.json");
    let adapter = out.join("adapter");
    // Generated captions for BLEU: one exact, one partly right.
    let captions = dir.path().join("captions.jsonl");
    std::fs::write(
        &captions,
        "{\"image\": \"red_0.png\", \"caption\": \"a photo of a red square\"}\n\
         {\"image\": \"blue_0.png\", \"caption\": \"a photo of a green circle\"}\n",
    )
    .unwrap();
    run(&[
        "eval",
        "--model",
        m,
        "--adapter",
        adapter.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--captions",
        captions.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(
        v["after"]["zero_shot"]["color"]["accuracy"].is_number(),
        "{v}"
    );
    assert!(v["before"]["image_to_text"]["r1"].is_number());
    // 10 of 12 unigrams match ("a photo of a red square", "a photo of a"),
    // equal lengths so no brevity penalty.
    let bleu1 = v["bleu"][0].as_f64().unwrap();
    assert!((bleu1 - 10.0 / 12.0).abs() < 1e-9, "{v}");
    assert!(dir.path().join("eval.svg").is_file());
    // A bad flag value is one line on stderr, not a panic.
    let bad = std::process::Command::new(exe)
        .args([
            "train",
            "--model",
            m,
            "--data",
            data.to_str().unwrap(),
            "--out",
            o,
            "--rank",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("r must be at least 1"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
