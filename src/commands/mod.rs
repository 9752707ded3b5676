//! Subcommand implementations (the binary's edge: anyhow errors with context).

pub mod bench;
pub mod caption;
pub mod cli;
pub mod cli_fleet;
pub mod client;
pub mod export;
pub mod fleet;
pub mod replay;
pub mod rig;
pub mod run;
pub mod search;
pub mod search_rig;
pub mod segments;
pub mod tag;
pub mod tag_rig;
pub mod uplink;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use roadrep::config::RoadrepConfig;
use roadrep::models::BlipCaptioner;
use roadrep::models::{ClipModel, ClipOptions, ModelManifest, OrtRuntime};
use roadrep::store::Store;
use roadrep::tagging::{LabelSets, SceneTagger, TextEmbeddingCache};

/// What replay, the daemon and the benchmarks load from the config: model,
/// tagger, store, captioner.
pub struct LoadedParts {
    pub model: Arc<ClipModel>,
    pub tagger: Arc<SceneTagger>,
    pub store: Store,
    /// Loaded when `[captions] model` is set.
    pub captioner: Option<Arc<BlipCaptioner>>,
}

impl LoadedParts {
    /// What the ingest keeps of each frame for captions: only with a
    /// captioner and segments (keyframes come from segments).
    pub fn caption_preprocess(
        &self,
        config: &RoadrepConfig,
    ) -> Option<roadrep::models::ImagePreprocessor> {
        use roadrep::caption::Captioner;
        let c = self
            .captioner
            .as_ref()
            .filter(|_| config.segments.enabled)?;
        Some(c.preprocessor().clone())
    }

    /// What the pipeline runs on.
    pub fn pipeline_parts(&self) -> roadrep::pipeline::PipelineParts {
        roadrep::pipeline::PipelineParts {
            model: self.model.clone(),
            tagger: self.tagger.clone(),
            store: self.store.clone(),
        }
    }
}

/// The ONNX Runtime the config names, its sessions run as `[models]` says.
pub fn ort_runtime(config: &RoadrepConfig) -> anyhow::Result<OrtRuntime> {
    Ok(OrtRuntime::load(config.models.ort_library.as_deref())?
        .with_spinning(config.models.ort_spinning))
}

/// Loads the configured captioner, if any.
pub fn load_captioner(config: &RoadrepConfig) -> anyhow::Result<Option<Arc<BlipCaptioner>>> {
    let Some(dir) = &config.captions.model else {
        return Ok(None);
    };
    let runtime = ort_runtime(config)?;
    let captioner = BlipCaptioner::load_with_precision(
        dir,
        &runtime,
        config.captions.intra_threads,
        config.captions.generation(),
        config.captions.precision,
    )
    .with_context(|| "[captions] model")?;
    Ok(Some(Arc::new(captioner)))
}

/// Loads the configured CLIP model (both encoders).
pub fn load_model(config: &RoadrepConfig) -> anyhow::Result<ClipModel> {
    let runtime = ort_runtime(config)?;
    let options = ClipOptions {
        precision: config.models.precision,
        intra_threads: config.intra_threads(),
        load_text_encoder: true,
        verified_files_dir: Some(cache_dir(config)),
    };
    Ok(ClipModel::load(&config.models.clip, &runtime, &options)?)
}

/// What fuses rig records: `[models] fusion`, else a fusion model made
/// for the CLIP model beside it, else the mean of the views.
pub fn load_fuser(
    config: &RoadrepConfig,
    model: &ClipModel,
) -> anyhow::Result<roadrep::fuse::fuser::RigFuser> {
    load_fuser_for(config, &config.models.clip, model)
}

/// [`load_fuser`] for the CLIP model in `clip_dir`.
pub fn load_fuser_for(
    config: &RoadrepConfig,
    clip_dir: &Path,
    model: &ClipModel,
) -> anyhow::Result<roadrep::fuse::fuser::RigFuser> {
    let options = roadrep::fuse::FusionOptions {
        intra_threads: 1,
        verified_files_dir: Some(cache_dir(config)),
    };
    roadrep::fuse::fuser::RigFuser::load(
        config.models.fusion.as_deref(),
        clip_dir,
        model.fingerprint(),
        &options,
    )
    .context("[models] fusion")
}

/// The configured cache directory (text embeddings, verified model files).
pub fn cache_dir(config: &RoadrepConfig) -> PathBuf {
    config
        .tagging
        .cache_dir
        .clone()
        .unwrap_or_else(TextEmbeddingCache::default_dir)
}

/// Loads the model and labels, builds the tagger, opens the store.
pub fn load_parts(config: &RoadrepConfig, store_path: &Path) -> anyhow::Result<LoadedParts> {
    let labels = LabelSets::from_file(&config.tagging.labels)?;
    let model = load_model(config)?;
    let cache = TextEmbeddingCache::new(cache_dir(config));
    let tagger = SceneTagger::new(&model, &labels, Some(&cache))?;
    if let Some(parent) = store_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating '{}'", parent.display()))?;
    }
    let captioner = load_captioner(config)?;
    let store = Store::open_with_index(
        store_path,
        model.fingerprint(),
        model.embed_dim(),
        &config.search,
    )?;
    Ok(LoadedParts {
        model: Arc::new(model),
        tagger: Arc::new(tagger),
        store,
        captioner,
    })
}

/// `roadrep verify-model DIR`: any model directory (CLIP, BLIP, fusion),
/// by the `kind` its manifest names.
pub fn verify_model(dir: &Path) -> anyhow::Result<ExitCode> {
    #[derive(serde::Deserialize)]
    struct Kind {
        kind: String,
    }
    let path = dir.join("manifest.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading '{}'", path.display()))?;
    let kind: Kind = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("'{}': {}", path.display(), e.message()))?;
    let (source, files, fingerprint, extra) = match kind.kind.as_str() {
        "blip" => {
            let m = roadrep::models::blip::BlipManifest::read_verified(dir)?;
            (m.source, m.files.len(), m.fingerprint, String::new())
        }
        "fusion" => {
            let (m, _) = roadrep::fuse::FusionManifest::read_verified(dir, None)?;
            let extra = format!(
                ", roles {}, for CLIP {}",
                m.fusion.roles.join(","),
                m.fusion.clip_fingerprint
            );
            (m.source, m.files.len(), m.fingerprint, extra)
        }
        _ => {
            let m = ModelManifest::read_verified(dir)?;
            (m.source, m.files.len(), m.fingerprint, String::new())
        }
    };
    println!(
        "{}: ok ({source}, {files} files, fingerprint {fingerprint}{extra})",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
