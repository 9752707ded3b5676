//! LoRA adapters (Hu et al., *LoRA: Low-Rank Adaptation of Large Language
//! Models*, <https://arxiv.org/abs/2106.09685>) on CLIP's linear layers.
//!
//! A target linear layer `y = x Wᵀ + b` becomes
//! `y = x Wᵀ + b + (α / r) · dropout(x) Aᵀ Bᵀ` with `A: [r, in]`, `B: [out, r]`.
//! `A` starts uniform in `±1/√in` (PEFT's Kaiming-uniform with `a = √5`) and
//! `B` at zero, so a fresh adapter leaves the model unchanged. The base stays
//! frozen. Names and the config file follow PEFT so the adapter can be read
//! by PEFT tooling: `adapter_config.json` with `r`, `lora_alpha`,
//! `lora_dropout`, `target_modules`, and tensors
//! `base_model.model.<module>.lora_A.weight` in `adapter_model.safetensors`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::TrainerError;
use super::clip::BaseWeights;
use super::rng::SplitMix64;

/// Adapter tensors file inside an adapter directory (PEFT's name).
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// Adapter config file inside an adapter directory (PEFT's name).
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// Name of the trained temperature in the adapter file (not a PEFT tensor:
/// CLIP's `logit_scale`, stored as its logarithm like the checkpoint).
pub const LOGIT_SCALE: &str = "logit_scale";

/// LoRA hyper-parameters, with PEFT's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank of the update.
    pub r: usize,
    /// Scale numerator: the update is multiplied by `lora_alpha / r`.
    pub lora_alpha: f64,
    /// Dropout probability on the adapter's input during training.
    pub lora_dropout: f32,
    /// Module name suffixes that get an adapter (`q_proj`, `out_proj`, `fc1`).
    pub target_modules: Vec<String>,
    /// Always `"LORA"` (PEFT reads it).
    #[serde(default = "peft_type")]
    pub peft_type: String,
    /// The model directory the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: String,
}

fn peft_type() -> String {
    "LORA".into()
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            target_modules: ["q_proj", "k_proj", "v_proj", "out_proj"]
                .map(String::from)
                .to_vec(),
            peft_type: peft_type(),
            base_model_name_or_path: String::new(),
        }
    }
}

impl LoraConfig {
    /// `lora_alpha / r`.
    pub fn scaling(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    /// Checks the values a run cannot work with.
    pub fn validate(&self) -> Result<(), TrainerError> {
        if self.r == 0 {
            return Err(TrainerError::Config("lora r must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(TrainerError::Config(
                "lora_dropout must be in [0, 1)".into(),
            ));
        }
        if self.target_modules.is_empty() {
            return Err(TrainerError::Config(
                "target_modules must name at least one module".into(),
            ));
        }
        Ok(())
    }

    /// Whether the module at `path` (e.g. `...self_attn.q_proj`) is a target:
    /// as PEFT matches a list, the path equals an entry or ends with `.` and
    /// the entry (`q_proj`, or several components: `attention.self.query`).
    pub fn targets(&self, module_path: &str) -> bool {
        self.target_modules.iter().any(|t| {
            module_path == t
                || module_path
                    .strip_suffix(t.as_str())
                    .is_some_and(|head| head.ends_with('.'))
        })
    }
}

/// The two factors of one adapted linear layer.
#[derive(Debug)]
pub struct LoraPair {
    /// `[r, in]`.
    pub a: Var,
    /// `[out, r]`.
    pub b: Var,
}

/// All adapters of a model, keyed by module path
/// (`vision_model.encoder.layers.0.self_attn.q_proj`).
#[derive(Debug)]
pub struct LoraAdapter {
    /// Hyper-parameters.
    pub config: LoraConfig,
    /// Adapted modules.
    pub pairs: BTreeMap<String, LoraPair>,
    /// CLIP: the learned `ln(logit_scale)`, trained with the adapters
    /// (`None` for models without a temperature, BLIP).
    pub log_logit_scale: Option<Var>,
}

/// PEFT's tensor name of factor `which` ("A" or "B") of `module`.
pub fn peft_name(module: &str, which: &str) -> String {
    format!("base_model.model.{module}.lora_{which}.weight")
}

impl LoraAdapter {
    /// Fresh adapters on every target linear layer of `base`: `A` random
    /// (seeded), `B` zero; and CLIP's temperature at `logit_scale`.
    pub fn new(
        config: LoraConfig,
        base: &BaseWeights,
        logit_scale: f32,
        seed: u64,
    ) -> Result<Self, TrainerError> {
        let mut adapter = Self::without_temperature(config, base, seed)?;
        adapter.log_logit_scale = Some(Var::new(logit_scale.ln(), base.device())?);
        Ok(adapter)
    }

    /// Fresh adapters on every target linear layer of `base`: `A` random
    /// (seeded), `B` zero; no temperature.
    pub fn without_temperature(
        config: LoraConfig,
        base: &BaseWeights,
        seed: u64,
    ) -> Result<Self, TrainerError> {
        config.validate()?;
        let mut rng = SplitMix64::new(seed);
        let mut pairs = BTreeMap::new();
        for (module, (out_dim, in_dim)) in base.linear_modules() {
            if !config.targets(&module) {
                continue;
            }
            let bound = 1.0 / (in_dim as f32).sqrt();
            let a: Vec<f32> = (0..config.r * in_dim)
                .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                .collect();
            let a = Var::from_vec(a, (config.r, in_dim), base.device())?;
            let b = Var::zeros((out_dim, config.r), DType::F32, base.device())?;
            pairs.insert(module, LoraPair { a, b });
        }
        if pairs.is_empty() {
            return Err(TrainerError::Config(format!(
                "target_modules {:?} match no linear layer of the model",
                config.target_modules
            )));
        }
        Ok(Self {
            config,
            pairs,
            log_logit_scale: None,
        })
    }

    /// Every trainable variable with its file name (PEFT names).
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        let mut out = Vec::with_capacity(self.pairs.len() * 2 + 1);
        for (module, pair) in &self.pairs {
            out.push((peft_name(module, "A"), &pair.a));
            out.push((peft_name(module, "B"), &pair.b));
        }
        if let Some(t) = &self.log_logit_scale {
            out.push((LOGIT_SCALE.to_string(), t));
        }
        out
    }

    /// CLIP's temperature variable, `ln(logit_scale)`.
    pub fn temperature(&self) -> Result<&Var, TrainerError> {
        self.log_logit_scale.as_ref().ok_or_else(|| {
            TrainerError::Config("the adapter has no logit_scale (not a CLIP adapter)".into())
        })
    }

    /// The learned `logit_scale` (`exp` of the variable).
    pub fn logit_scale(&self) -> Result<f32, TrainerError> {
        Ok(self.temperature()?.as_tensor().to_scalar::<f32>()?.exp())
    }

    /// `(α / r) · B A`: what the adapter adds to `module`'s weight, or `None`
    /// if the module has no adapter.
    pub fn delta(&self, module: &str) -> Result<Option<Tensor>, TrainerError> {
        match self.pairs.get(module) {
            Some(p) => Ok(Some(
                (p.b.as_tensor().matmul(p.a.as_tensor())? * self.config.scaling())?,
            )),
            None => Ok(None),
        }
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), TrainerError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
        let config_path = dir.join(ADAPTER_CONFIG);
        let json =
            serde_json::to_string_pretty(&self.config).map_err(|e| TrainerError::Checkpoint {
                path: config_path.clone(),
                message: e.to_string(),
            })?;
        std::fs::write(&config_path, json).map_err(|e| TrainerError::io(&config_path, e))?;
        let tensors: HashMap<String, Tensor> = self
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_detached_tensor()))
            .collect();
        let path = dir.join(ADAPTER_WEIGHTS);
        candle_core::safetensors::save(&tensors, &path).map_err(|e| TrainerError::Checkpoint {
            path,
            message: e.to_string(),
        })
    }

    /// Reads an adapter directory written by [`LoraAdapter::save`] and checks
    /// it against `base` (every tensor present, shapes that fit).
    pub fn load(dir: &Path, base: &BaseWeights) -> Result<Self, TrainerError> {
        let config_path = dir.join(ADAPTER_CONFIG);
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| TrainerError::io(&config_path, e))?;
        let config: LoraConfig =
            serde_json::from_str(&text).map_err(|e| TrainerError::Checkpoint {
                path: config_path.clone(),
                message: e.to_string(),
            })?;
        config.validate()?;
        let path = dir.join(ADAPTER_WEIGHTS);
        let tensors = candle_core::safetensors::load(&path, base.device()).map_err(|e| {
            TrainerError::Checkpoint {
                path: path.clone(),
                message: e.to_string(),
            }
        })?;
        Self::from_tensors(config, &tensors, base, &path)
    }

    /// Builds an adapter from named tensors (file or checkpoint).
    pub fn from_tensors(
        config: LoraConfig,
        tensors: &HashMap<String, Tensor>,
        base: &BaseWeights,
        path: &Path,
    ) -> Result<Self, TrainerError> {
        let fail = |message: String| TrainerError::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let get = |name: &str| {
            tensors
                .get(name)
                .ok_or_else(|| fail(format!("tensor '{name}' is missing")))
        };
        let mut pairs = BTreeMap::new();
        for (module, (out_dim, in_dim)) in base.linear_modules() {
            if !config.targets(&module) {
                continue;
            }
            let a = get(&peft_name(&module, "A"))?;
            let b = get(&peft_name(&module, "B"))?;
            if a.dims() != [config.r, in_dim] || b.dims() != [out_dim, config.r] {
                return Err(fail(format!(
                    "adapter of '{module}' has shapes {:?} and {:?}, the model needs [{}, {in_dim}] and [{out_dim}, {}]",
                    a.dims(),
                    b.dims(),
                    config.r,
                    config.r
                )));
            }
            pairs.insert(
                module,
                LoraPair {
                    a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
                    b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
                },
            );
        }
        // CLIP adapters carry the temperature; BLIP ones have none.
        let log_logit_scale = match tensors.get(LOGIT_SCALE) {
            Some(t) => Some(Var::from_tensor(&t.to_dtype(DType::F32)?)?),
            None => None,
        };
        Ok(Self {
            config,
            pairs,
            log_logit_scale,
        })
    }

    /// Sets every `B` to zero (a no-op adapter; tests and ablations).
    pub fn zero_b(&self) -> Result<(), TrainerError> {
        for pair in self.pairs.values() {
            pair.b.set(&pair.b.as_tensor().zeros_like()?)?;
        }
        Ok(())
    }

    /// The device the adapter lives on.
    pub fn device(&self) -> Device {
        self.pairs
            .values()
            .next()
            .map_or(Device::Cpu, |p| p.a.device().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_match_the_last_component() {
        let c = LoraConfig::default();
        assert!(c.targets("vision_model.encoder.layers.0.self_attn.q_proj"));
        assert!(c.targets("text_model.encoder.layers.1.self_attn.out_proj"));
        assert!(!c.targets("vision_model.encoder.layers.0.mlp.fc1"));
        assert!(!c.targets("visual_projection"));
        assert!(!c.targets("text_model.encoder.layers.1.self_attn.xq_proj"));
        assert_eq!(c.scaling(), 2.0);
        // Several components: PEFT's suffix match.
        let c = LoraConfig {
            target_modules: vec!["attention.output.dense".into(), "self.query".into()],
            ..Default::default()
        };
        assert!(c.targets("text_decoder.bert.encoder.layer.0.attention.output.dense"));
        assert!(!c.targets("text_decoder.bert.encoder.layer.0.crossattention.output.dense"));
        assert!(c.targets("text_decoder.bert.encoder.layer.0.crossattention.self.query"));
        assert!(!c.targets("text_decoder.bert.encoder.layer.0.output.dense"));
    }

    #[test]
    fn config_uses_peft_names() {
        let json = serde_json::to_value(LoraConfig::default()).unwrap();
        for key in [
            "r",
            "lora_alpha",
            "lora_dropout",
            "target_modules",
            "peft_type",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert!(
            LoraConfig {
                r: 0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
