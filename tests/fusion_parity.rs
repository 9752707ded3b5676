//! Numerical parity of the rig fusion model with its PyTorch reference.
//!
//! `models/export.py --fusion --tiny --reference-out tests/fixtures/fusion-tiny`
//! wrote `reference.json` (inputs with garbage in absent slots, and
//! `RigFusion` outputs) for the committed `models/fusion-tiny` (gate 0: the
//! mean of the present views) and for `perturbed/` (gate 0.9, weights that
//! make the transformer and the pooling matter).

mod common;

use std::path::{Path, PathBuf};

use roadrep::fuse::{FusionManifest, FusionModel, FusionOptions, mean_of_views};
use roadrep::models::ModelError;
use serde::Deserialize;

const TOLERANCE: f32 = 1e-5;

#[derive(Deserialize)]
struct Reference {
    model_fingerprint: String,
    perturbed_fingerprint: String,
    clip_fingerprint: String,
    roles: Vec<String>,
    embed_dim: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    /// [batch][role][dim]
    view_embeddings: Vec<Vec<Vec<f32>>>,
    /// [batch][role]
    view_present: Vec<Vec<f32>>,
    fused: Vec<Vec<f32>>,
    fused_perturbed: Vec<Vec<f32>>,
}

impl Case {
    /// The case's rows as `fuse` takes them: absent slots are `None`.
    fn records(&self) -> Vec<Vec<Option<&[f32]>>> {
        self.view_embeddings
            .iter()
            .zip(&self.view_present)
            .map(|(views, present)| {
                views
                    .iter()
                    .zip(present)
                    .map(|(v, &p)| (p == 1.0).then_some(v.as_slice()))
                    .collect()
            })
            .collect()
    }
}

fn fixtures() -> PathBuf {
    common::root().join("tests/fixtures/fusion-tiny")
}

fn reference() -> Reference {
    let path = fixtures().join("reference.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn open(dir: &Path) -> FusionModel {
    common::runtime();
    FusionModel::open(dir, &FusionOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn tiny() -> FusionModel {
    open(&common::root().join("models/fusion-tiny"))
}

fn perturbed() -> FusionModel {
    open(&fixtures().join("perturbed"))
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

#[test]
fn committed_tiny_model_matches_pytorch_and_is_the_mean() {
    let r = reference();
    let model = tiny();
    assert_eq!(
        model.fingerprint(),
        r.model_fingerprint,
        "re-run `make fixtures`"
    );
    assert_eq!(model.roles(), r.roles.as_slice());
    assert_eq!(model.embed_dim(), r.embed_dim);
    let (mut worst, mut worst_mean) = (0.0f32, 0.0f32);
    for case in &r.cases {
        let records = case.records();
        let fused = model.fuse(&records).unwrap();
        let d = max_diff(&fused, &case.fused);
        assert!(d <= TOLERANCE, "{}: max |ORT - PyTorch| = {d}", case.name);
        worst = worst.max(d);
        let means: Vec<Vec<f32>> = records.iter().map(|r| mean_of_views(r).unwrap()).collect();
        let dm = max_diff(&fused, &means);
        assert!(
            dm <= 1e-6,
            "{}: gate 0 must give the mean, off by {dm}",
            case.name
        );
        worst_mean = worst_mean.max(dm);
    }
    eprintln!(
        "fusion-tiny: max |ORT - PyTorch| {worst:e}, max |ORT - mean_of_views| {worst_mean:e}"
    );
}

#[test]
fn perturbed_model_matches_pytorch_and_is_not_the_mean() {
    let r = reference();
    let model = perturbed();
    assert_eq!(model.fingerprint(), r.perturbed_fingerprint);
    let (mut worst, mut from_mean) = (0.0f32, 0.0f32);
    for case in &r.cases {
        let records = case.records();
        let fused = model.fuse(&records).unwrap();
        let d = max_diff(&fused, &case.fused_perturbed);
        assert!(d <= TOLERANCE, "{}: max |ORT - PyTorch| = {d}", case.name);
        worst = worst.max(d);
        let means: Vec<Vec<f32>> = records.iter().map(|r| mean_of_views(r).unwrap()).collect();
        from_mean = from_mean.max(max_diff(&fused, &means));
    }
    // Proves the parity test above can fail: this model is not mean pooling.
    assert!(
        from_mean > 0.1,
        "perturbed output within {from_mean} of the mean"
    );
    eprintln!("perturbed: max |ORT - PyTorch| {worst:e}, max distance from the mean {from_mean}");
}

#[test]
fn a_batch_gives_what_one_record_at_a_time_gives() {
    let r = reference();
    let model = perturbed();
    let rows: Vec<Vec<Option<&[f32]>>> = r.cases.iter().flat_map(Case::records).collect();
    // More than one chunk of 64.
    let many: Vec<Vec<Option<&[f32]>>> = rows.iter().cycle().take(150).cloned().collect();
    let batched = model.fuse(&many).unwrap();
    let single: Vec<Vec<f32>> = many
        .iter()
        .map(|rec| model.fuse(std::slice::from_ref(rec)).unwrap().remove(0))
        .collect();
    let d = max_diff(&batched, &single);
    assert!(d <= 1e-6, "batched vs single: {d}");
    assert!(model.fuse(&[]).unwrap().is_empty());
}

#[test]
fn a_fusion_model_for_another_clip_is_refused() {
    let r = reference();
    let model = tiny();
    model.check_clip(&r.clip_fingerprint).unwrap();
    let other = "0".repeat(64);
    let err = model.check_clip(&other).unwrap_err();
    assert!(matches!(err, ModelError::ClipMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    for part in [r.clip_fingerprint.as_str(), &other, "models/fusion-tiny"] {
        assert!(msg.contains(part), "{msg}");
    }
    assert!(!msg.contains('\n'));
}

#[test]
fn a_tampered_fusion_onnx_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fusion");
    common::copy_dir(&common::root().join("models/fusion-tiny"), &dir);
    let onnx = dir.join("fusion.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&onnx, bytes).unwrap();
    common::runtime();
    let err = FusionModel::open(&dir, &FusionOptions::default()).unwrap_err();
    assert!(matches!(err, ModelError::Checksum { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&onnx.display().to_string()),
        "{err}"
    );

    // A config.json that disagrees with the manifest, re-recorded (sha256,
    // fingerprint) as a hand edit would have to be, is refused naming it.
    common::copy_dir(&common::root().join("models/fusion-tiny"), &dir);
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"back_right\"", "\"rear\"")).unwrap();
    let manifest_path = dir.join("manifest.toml");
    let sha = |p: &Path| roadrep::models::manifest::sha256_file(p).unwrap();
    let old = sha(&common::root().join("models/fusion-tiny/config.json"));
    let text = std::fs::read_to_string(&manifest_path)
        .unwrap()
        .replace(&old, &sha(&config));
    let manifest: FusionManifest = toml::from_str(&text).unwrap();
    let text = text.replace(
        &manifest.fingerprint,
        &manifest.compute_fingerprint().unwrap(),
    );
    std::fs::write(&manifest_path, text).unwrap();
    let err = FusionModel::open(&dir, &FusionOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("config.json") && msg.contains("rear"), "{msg}");
}

#[test]
fn files_verified_once_are_recorded() {
    let cache = tempfile::tempdir().unwrap();
    let options = FusionOptions {
        intra_threads: 1,
        verified_files_dir: Some(cache.path().to_path_buf()),
    };
    common::runtime();
    let dir = common::root().join("models/fusion-tiny");
    FusionModel::open(&dir, &options).unwrap();
    let record =
        std::fs::read_to_string(cache.path().join(roadrep::models::verified::RECORD_FILE)).unwrap();
    assert!(
        record.contains("fusion.onnx") && record.contains("config.json"),
        "{record}"
    );
    FusionModel::open(&dir, &options).unwrap();
}

#[test]
fn bad_records_are_errors_not_panics() {
    let model = tiny();
    let view = vec![0.1f32; model.embed_dim()];
    let short = vec![0.1f32; model.embed_dim() - 1];
    let n = model.roles().len();
    let mut ok: Vec<Option<&[f32]>> = vec![None; n];
    ok[model.role_slot("back").unwrap()] = Some(&view);
    assert_eq!(model.role_slot("rear"), None);

    let mut wrong_dim = ok.clone();
    wrong_dim[0] = Some(&short);
    let none_present: Vec<Option<&[f32]>> = vec![None; n];
    let too_few = ok[..n - 1].to_vec();
    for (records, needle) in [
        (
            vec![ok.clone(), wrong_dim],
            "record 1: the front view has 31 values, expected 32",
        ),
        (vec![none_present], "record 0: no view present"),
        (
            vec![ok.clone(), ok.clone(), too_few],
            "record 2: 5 view slots, the model has 6",
        ),
    ] {
        let err = model.fuse(&records).unwrap_err();
        assert!(matches!(err, ModelError::Input { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(needle) && msg.contains("fusion.onnx"), "{msg}");
    }
    assert_eq!(model.fuse(&[ok]).unwrap()[0].len(), model.embed_dim());
}

/// ORT time per record at full size (D 512, 2 layers), batch 1 and 32:
/// `cargo test --release --test fusion_parity -- --ignored --nocapture`
/// after `make random-full`.
#[test]
#[ignore]
fn time_per_record_random_full() {
    let dir = common::root().join("models/fusion-random-full");
    if !dir.is_dir() {
        eprintln!("{} absent: `make random-full`", dir.display());
        return;
    }
    let model = open(&dir);
    let d = model.embed_dim();
    let views: Vec<Vec<f32>> = (0..6)
        .map(|k| {
            (0..d)
                .map(|i| (((i * 7 + k * 13) % 17) as f32 - 8.0) / 40.0)
                .collect()
        })
        .collect();
    // Five of six views present, the common partial record.
    let record: Vec<Option<&[f32]>> = views
        .iter()
        .enumerate()
        .map(|(k, v)| (k != 4).then_some(v.as_slice()))
        .collect();
    for batch in [1usize, 32] {
        let records = vec![record.clone(); batch];
        model.fuse(&records).unwrap();
        let runs = if batch == 1 { 400 } else { 40 };
        let start = std::time::Instant::now();
        for _ in 0..runs {
            model.fuse(&records).unwrap();
        }
        let per = start.elapsed().as_secs_f64() * 1e3 / (runs * batch) as f64;
        eprintln!("fusion-random-full batch {batch}: {per:.4} ms per record (1 intra thread)");
    }
}
