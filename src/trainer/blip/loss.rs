//! The teacher-forced captioning loss, as transformers computes it for
//! `BlipForConditionalGeneration(pixel_values, input_ids, labels)`.
//!
//! Decoder input: `[DEC] prompt caption [SEP]` (the tokenizer's `[CLS]`
//! replaced by the decoder start token, as `generate` and BLIP's
//! fine-tuning do), right-padded. Labels: the input ids with the start
//! token, the prompt and the padding ignored; shifted by one (position `p`
//! predicts token `p + 1`). Cross-entropy with label smoothing `ε`
//! (PyTorch's: `(1 - ε) · nll + ε · mean over the vocabulary of -log p`),
//! averaged over the caption tokens of the batch.

use std::path::PathBuf;

use candle_core::{D, DType, Device, Tensor};
use tokenizers::Tokenizer;

use super::CandleBlip;
use crate::trainer::TrainerError;
use crate::trainer::clip::Forward;

/// Captions as decoder inputs and labels.
#[derive(Debug)]
pub struct CaptionTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    bos: u32,
    pad: u32,
    prompt: Option<String>,
    prompt_len: usize,
    max_len: usize,
}

/// One caption: decoder input ids and how many leading ones are not
/// predicted (start token + prompt).
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionIds {
    /// `[DEC] prompt caption [SEP]`.
    pub ids: Vec<u32>,
    /// Leading ids without a loss.
    pub masked: usize,
}

/// A padded batch: `ids [n, seq]` and, per row, the label of each position
/// (`None`: ignored).
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// Right-padded ids.
    pub ids: Vec<Vec<u32>>,
    /// Labels, same shape (`None` = -100).
    pub labels: Vec<Vec<Option<u32>>>,
}

impl CaptionTokenizer {
    /// The model directory's `tokenizer.json`; captions start after
    /// `prompt` (the daemon's `[caption] prompt`) and are cut at `max_len`
    /// ids in all.
    pub fn new(
        model: &CandleBlip,
        prompt: Option<&str>,
        max_len: usize,
    ) -> Result<Self, TrainerError> {
        let dir = &model.dir;
        let path = dir.join(
            &model
                .manifest
                .file(dir, crate::models::blip::roles::TOKENIZER)?
                .path,
        );
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| TrainerError::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let b = &model.manifest.blip;
        let mut t = Self {
            tokenizer,
            path,
            bos: b.bos_token_id,
            pad: b.pad_token_id,
            prompt: prompt.map(str::to_string),
            prompt_len: 1,
            max_len: max_len.min(b.max_positions),
        };
        if let Some(p) = prompt {
            // `[CLS] prompt [SEP]` without the `[SEP]`: what generate starts from.
            t.prompt_len = t.raw(p)?.len() - 1;
        }
        if t.max_len < t.prompt_len + 2 {
            return Err(TrainerError::Config(format!(
                "max_text_tokens {max_len} leaves no room for a caption after the prompt"
            )));
        }
        Ok(t)
    }

    fn raw(&self, text: &str) -> Result<Vec<u32>, TrainerError> {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TrainerError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// The decoder input the daemon starts from: start token + prompt.
    pub fn prompt_ids(&self) -> Result<Vec<u32>, TrainerError> {
        let mut ids = match &self.prompt {
            Some(p) => self.raw(p)?,
            None => vec![self.bos, 0],
        };
        ids.pop();
        ids[0] = self.bos;
        Ok(ids)
    }

    /// Decoder input and mask length of one caption (cut at `max_len`,
    /// keeping the final `[SEP]`).
    pub fn encode(&self, caption: &str) -> Result<CaptionIds, TrainerError> {
        let text = match &self.prompt {
            Some(p) => format!("{p} {caption}"),
            None => caption.to_string(),
        };
        let mut ids = self.raw(&text)?;
        if ids.len() > self.max_len {
            let sep = ids[ids.len() - 1];
            ids.truncate(self.max_len - 1);
            ids.push(sep);
        }
        ids[0] = self.bos;
        Ok(CaptionIds {
            ids,
            masked: self.prompt_len,
        })
    }

    /// Text of ids, special tokens removed.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TrainerError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| TrainerError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Pads `rows` on the right into a batch with its labels.
    pub fn batch(&self, rows: &[&CaptionIds]) -> TokenBatch {
        let width = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
        let mut out = TokenBatch {
            ids: Vec::with_capacity(rows.len()),
            labels: Vec::with_capacity(rows.len()),
        };
        for r in rows {
            let mut ids = r.ids.clone();
            let mut labels: Vec<Option<u32>> = ids
                .iter()
                .enumerate()
                .map(|(i, &id)| (i >= r.masked).then_some(id))
                .collect();
            ids.resize(width, self.pad);
            labels.resize(width, None);
            out.ids.push(ids);
            out.labels.push(labels);
        }
        out
    }
}

impl TokenBatch {
    /// `[n, seq]` u32 ids.
    pub fn ids_tensor(&self, device: &Device) -> Result<Tensor, TrainerError> {
        let (n, t) = (self.ids.len(), self.ids.first().map_or(0, Vec::len));
        let flat: Vec<u32> = self.ids.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(flat, (n, t), device)?)
    }

    /// Flat positions `row * seq + p` whose next token is a label, and the
    /// labels (the shift).
    pub fn targets(&self) -> (Vec<u32>, Vec<u32>) {
        let (mut rows, mut labels) = (Vec::new(), Vec::new());
        for (b, row) in self.labels.iter().enumerate() {
            let t = row.len();
            for p in 0..t.saturating_sub(1) {
                if let Some(l) = row[p + 1] {
                    rows.push((b * t + p) as u32);
                    labels.push(l);
                }
            }
        }
        (rows, labels)
    }

    /// Caption tokens with a loss.
    pub fn token_count(&self) -> usize {
        self.targets().1.len()
    }
}

/// Mean label-smoothed cross-entropy of `logits [N, V]` against `labels`.
pub fn smoothed_cross_entropy(
    logits: &Tensor,
    labels: &[u32],
    smoothing: f64,
) -> Result<Tensor, TrainerError> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let idx = Tensor::from_vec(labels.to_vec(), (labels.len(), 1), logits.device())?;
    let picked = shifted.gather(&idx, 1)?;
    let nll = (&lse - picked)?;
    let loss = if smoothing > 0.0 {
        let uniform = lse.broadcast_sub(&shifted.mean_keepdim(D::Minus1)?)?;
        ((nll * (1.0 - smoothing))? + (uniform * smoothing)?)?
    } else {
        nll
    };
    Ok(loss.mean_all()?)
}

impl CandleBlip {
    /// The captioning loss of `batch` over `pixel_values` (one image per
    /// row), label smoothing `smoothing`.
    pub fn caption_loss(
        &self,
        pixel_values: &Tensor,
        batch: &TokenBatch,
        smoothing: f64,
        fwd: Forward<'_>,
    ) -> Result<Tensor, TrainerError> {
        let device = pixel_values.device();
        let (rows, labels) = batch.targets();
        if rows.is_empty() {
            return Err(TrainerError::Config(
                "a batch without caption tokens".into(),
            ));
        }
        let image = self.vision(pixel_values, fwd)?;
        let h = self.decoder_hidden(&batch.ids_tensor(device)?, &image, fwd)?;
        let d = self.config.text_config.hidden_size;
        let n = h.elem_count() / d;
        let picked = h
            .reshape((n, d))?
            .index_select(&Tensor::from_vec(rows.clone(), rows.len(), device)?, 0)?;
        let logits = self.lm_head(&picked, fwd)?;
        smoothed_cross_entropy(&logits.to_dtype(DType::F32)?, &labels, smoothing)
    }
}
