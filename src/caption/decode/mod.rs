//! Greedy and beam-search decoding, as transformers' `generate` does them
//! (transformers 5, batch of one image), so captions match it token for
//! token, for one image or several per decoder run ([`generate_batch`]):
//! - greedy: the repetition penalty applies to the raw logits, then argmax
//!   (first index on ties);
//! - beam search: log-softmax, then the repetition penalty on the
//!   log-probabilities, `2 * num_beams` candidates per step, finished
//!   hypotheses scored by `sum logprob / generated_len ^ length_penalty`,
//!   and transformers' early-stop heuristic (`early_stopping = false`);
//! - the repetition penalty covers every token of the row, prompt included;
//! - `max_new_tokens` counts tokens after the prompt; the end token is kept.

mod beam;

use super::CaptionError;
use beam::BeamImage;

/// Decoding settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSettings {
    /// Text the caption starts with.
    pub prompt: Option<String>,
    /// Most tokens generated after the prompt.
    pub max_new_tokens: usize,
    /// 1 = greedy.
    pub num_beams: usize,
    /// 1 = off.
    pub repetition_penalty: f32,
    /// Beam search length normalisation exponent.
    pub length_penalty: f32,
}

impl Default for GenerationSettings {
    fn default() -> Self {
        Self {
            prompt: None,
            max_new_tokens: 20,
            num_beams: 1,
            repetition_penalty: 1.0,
            length_penalty: 1.0,
        }
    }
}

/// A decoder with a cache, fed token by token.
pub trait StepModel {
    /// Feeds the next tokens of every row (the same number per row; the
    /// first call sets the number of rows) and returns the logits of each
    /// row's last position.
    fn forward(&mut self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>, CaptionError>;
    /// Reorders the cache: new row `i` continues old row `from[i]`.
    fn select(&mut self, from: &[usize]) -> Result<(), CaptionError>;
}

/// Generates from `prompt` (start token and prompt tokens) until `eos` or
/// `max_new_tokens`; returns the whole sequence, prompt included.
pub fn generate(
    model: &mut dyn StepModel,
    prompt: &[u32],
    eos: u32,
    settings: &GenerationSettings,
    pace: &mut dyn FnMut(),
) -> Result<Vec<u32>, CaptionError> {
    let mut out = generate_batch(model, 1, prompt, eos, settings, pace)?;
    out.pop()
        .ok_or_else(|| CaptionError::Image("the decoder returned no caption".into()))
}

/// Generates the captions of `images` images in one decoding loop: every
/// decoder run advances all unfinished images by one token. The first call
/// has one prompt row per image; after it, the unfinished images' rows come
/// in image order, `width` consecutive rows each (1 greedy, `num_beams`
/// beam search). An image that finishes leaves the batch (`select` drops
/// its rows), so the others no longer pay for it.
///
/// Each image only ever reads its own rows' logits, so its caption is the
/// one [`generate`] gives for it alone, as long as the model computes each
/// row independently of the others (the BLIP decoders do: see
/// `models/blip/batch.rs`).
pub fn generate_batch(
    model: &mut dyn StepModel,
    images: usize,
    prompt: &[u32],
    eos: u32,
    settings: &GenerationSettings,
    pace: &mut dyn FnMut(),
) -> Result<Vec<Vec<u32>>, CaptionError> {
    if images == 0 {
        return Ok(Vec::new());
    }
    let beams = settings.num_beams.max(1);
    let mut state: Vec<ImageState> = (0..images)
        .map(|_| {
            if beams == 1 {
                ImageState::Greedy(prompt.to_vec())
            } else {
                ImageState::Beam(Box::new(BeamImage::new(prompt, eos, settings)))
            }
        })
        .collect();
    let mut done: Vec<Option<Vec<u32>>> = vec![None; images];
    // Images still in the model, in row order, and rows per image now.
    let mut active: Vec<usize> = (0..images).collect();
    let mut width = 1;

    pace();
    let prompts = vec![prompt; images];
    let mut logits = model.forward(&prompts)?;
    if beams > 1 {
        // Every beam starts from its image's prompt row.
        model.select(&expand(images, beams))?;
        logits = logits
            .into_iter()
            .flat_map(|row| std::iter::repeat_n(row, beams))
            .collect();
        width = beams;
    }
    loop {
        if logits.len() != active.len() * width {
            return Err(CaptionError::Image(format!(
                "the decoder returned {} logit rows for {} rows",
                logits.len(),
                active.len() * width
            )));
        }
        let mut from = Vec::with_capacity(logits.len());
        let mut still = Vec::with_capacity(active.len());
        for (k, &image) in active.iter().enumerate() {
            let rows = &mut logits[k * width..(k + 1) * width];
            let sources = match &mut state[image] {
                ImageState::Greedy(ids) => {
                    repetition_penalty(&mut rows[0], ids, settings.repetition_penalty);
                    let next = argmax(&rows[0]);
                    ids.push(next);
                    let end = next == eos || ids.len() - prompt.len() >= settings.max_new_tokens;
                    (!end).then(|| vec![0])
                }
                ImageState::Beam(search) => search.step(rows),
            };
            match sources {
                Some(sources) => {
                    from.extend(sources.iter().map(|s| k * width + s));
                    still.push(image);
                }
                None => {
                    // An empty placeholder: finished images are not visited again.
                    let finished =
                        std::mem::replace(&mut state[image], ImageState::Greedy(Vec::new()));
                    done[image] = Some(finished.into_ids());
                }
            }
        }
        if still.is_empty() {
            break;
        }
        // Greedy with nobody finished: the cache is already in order.
        if !from.iter().copied().eq(0..logits.len()) {
            model.select(&from)?;
        }
        active = still;
        let next: Vec<[u32; 1]> = active
            .iter()
            .flat_map(|&i| state[i].last_tokens())
            .map(|t| [t])
            .collect();
        let rows: Vec<&[u32]> = next.iter().map(|r| r.as_slice()).collect();
        pace();
        logits = model.forward(&rows)?;
    }
    Ok(done.into_iter().map(Option::unwrap_or_default).collect())
}

/// Row `i` of the result continues row `i / per` (each row repeated `per`
/// times).
fn expand(rows: usize, per: usize) -> Vec<usize> {
    (0..rows)
        .flat_map(|r| std::iter::repeat_n(r, per))
        .collect()
}

/// Where one image's decoding stands.
enum ImageState {
    /// The tokens so far, prompt included.
    Greedy(Vec<u32>),
    Beam(Box<BeamImage>),
}

impl ImageState {
    fn last_tokens(&self) -> Vec<u32> {
        match self {
            ImageState::Greedy(ids) => ids.last().copied().into_iter().collect(),
            ImageState::Beam(search) => search.last_tokens().collect(),
        }
    }

    fn into_ids(self) -> Vec<u32> {
        match self {
            ImageState::Greedy(ids) => ids,
            ImageState::Beam(search) => search.into_best(),
        }
    }
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: every token already in
/// the row gets its score divided by the penalty if positive, multiplied if
/// negative.
pub fn repetition_penalty(scores: &mut [f32], ids: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for &id in ids {
        if let Some(s) = scores.get_mut(id as usize)
            && seen.insert(id)
        {
            *s = if *s < 0.0 { *s * penalty } else { *s / penalty };
        }
    }
}

/// Index of the largest value (the first one on ties, as `torch.argmax`).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Log-softmax (f32 values, f64 sum).
pub fn log_softmax(v: &[f32]) -> Vec<f32> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = v.iter().map(|x| ((x - max) as f64).exp()).sum();
    let log_sum = sum.ln() as f32;
    v.iter().map(|x| x - max - log_sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bigram model: logits depend on the last token only.
    struct Bigram {
        table: Vec<Vec<f32>>,
        rows: Vec<u32>,
        calls: usize,
    }

    impl StepModel for Bigram {
        fn forward(&mut self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>, CaptionError> {
            self.calls += 1;
            self.rows = rows.iter().map(|r| *r.last().unwrap()).collect();
            Ok(self
                .rows
                .iter()
                .map(|&t| self.table[t as usize].clone())
                .collect())
        }
        fn select(&mut self, from: &[usize]) -> Result<(), CaptionError> {
            assert!(from.iter().all(|&i| i < self.rows.len()));
            Ok(())
        }
    }

    const EOS: u32 = 4;

    /// 0 = start. Greedy goes 0 -> 1 (0.5) -> 4 (0.3, weak end); beam search
    /// finds 0 -> 2 (0.45) -> 4 (0.95), the likelier caption.
    fn model() -> Bigram {
        let p = |v: [f32; 5]| v.iter().map(|x| x.ln()).collect::<Vec<_>>();
        Bigram {
            table: vec![
                p([0.01, 0.5, 0.45, 0.03, 0.01]),
                p([0.2, 0.2, 0.2, 0.1, 0.3]),
                p([0.01, 0.01, 0.01, 0.02, 0.95]),
                p([0.01, 0.01, 0.01, 0.96, 0.01]),
                p([0.2, 0.2, 0.2, 0.2, 0.2]),
            ],
            rows: Vec::new(),
            calls: 0,
        }
    }

    fn settings(beams: usize, max: usize) -> GenerationSettings {
        GenerationSettings {
            num_beams: beams,
            max_new_tokens: max,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_the_best_token_and_stops_at_the_end_token() {
        let mut m = model();
        let ids = generate(&mut m, &[0], EOS, &settings(1, 10), &mut || {}).unwrap();
        assert_eq!(ids, [0, 1, 4]);
        assert_eq!(
            m.calls, 2,
            "one prefill and one step per new token but the last"
        );
    }

    #[test]
    fn greedy_stops_at_max_new_tokens_counting_after_the_prompt() {
        let mut m = model();
        let ids = generate(&mut m, &[0, 3], EOS, &settings(1, 3), &mut || {}).unwrap();
        assert_eq!(ids, [0, 3, 3, 3, 3]);
    }

    #[test]
    fn beam_search_finds_the_likelier_sequence() {
        let mut m = model();
        let ids = generate(&mut m, &[0], EOS, &settings(3, 10), &mut || {}).unwrap();
        assert_eq!(ids, [0, 2, 4]);
    }

    #[test]
    fn repetition_penalty_breaks_a_loop() {
        let mut m = model();
        let s = GenerationSettings {
            repetition_penalty: 3.0,
            ..settings(1, 4)
        };
        let ids = generate(&mut m, &[0, 3], EOS, &s, &mut || {}).unwrap();
        // ln(0.96) * 3 = -0.12 still beats ln(0.01): 3 stays, but 0 (in the
        // prompt) is penalised too.
        assert_eq!(ids[..3], [0, 3, 3]);
        let mut scores = vec![2.0, -2.0, 1.0];
        repetition_penalty(&mut scores, &[0, 1, 1], 2.0);
        assert_eq!(scores, [1.0, -4.0, 1.0]);
    }

    #[test]
    fn pace_runs_before_every_model_call() {
        let mut m = model();
        let mut paced = 0;
        generate(&mut m, &[0, 3], EOS, &settings(2, 5), &mut || paced += 1).unwrap();
        assert_eq!(paced, m.calls);
    }

    /// Bigram tables per image: rows remember their image through
    /// `select`, as the BLIP decoder's cache and cross K/V do.
    struct PerImage {
        tables: Vec<Vec<Vec<f32>>>,
        /// Image of each current row.
        row_image: Vec<usize>,
        /// Rows of each forward call.
        calls: Vec<usize>,
    }

    impl PerImage {
        fn new(images: &[usize]) -> Self {
            let base = model().table;
            // Image 0: `model()`, 0 -> 1 -> 4; 1: 0 -> 3 -> 3 ... (never
            // ends); 2: 0 -> 2 -> 4; 3: 0 -> 4 at once.
            let tables = images
                .iter()
                .map(|&k| {
                    let mut t = base.clone();
                    match k {
                        0 => {}
                        1 => t[0].reverse(),
                        2 => t[0].swap(1, 2),
                        _ => t[0].swap(1, 4),
                    }
                    t
                })
                .collect();
            Self {
                tables,
                row_image: Vec::new(),
                calls: Vec::new(),
            }
        }
    }

    impl StepModel for PerImage {
        fn forward(&mut self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>, CaptionError> {
            if self.row_image.is_empty() {
                self.row_image = (0..rows.len()).collect();
            }
            assert_eq!(rows.len(), self.row_image.len());
            self.calls.push(rows.len());
            Ok(rows
                .iter()
                .zip(&self.row_image)
                .map(|(r, &i)| self.tables[i][*r.last().unwrap() as usize].clone())
                .collect())
        }
        fn select(&mut self, from: &[usize]) -> Result<(), CaptionError> {
            self.row_image = from.iter().map(|&r| self.row_image[r]).collect();
            Ok(())
        }
    }

    #[test]
    fn a_batch_gives_each_image_its_caption_alone() {
        let images = [0, 1, 2, 0, 3];
        for beams in [1, 2, 3] {
            for max in [1, 3, 8] {
                let s = settings(beams, max);
                let alone: Vec<Vec<u32>> = images
                    .iter()
                    .map(|&k| {
                        generate(&mut PerImage::new(&[k]), &[0], EOS, &s, &mut || {}).unwrap()
                    })
                    .collect();
                let mut m = PerImage::new(&images);
                let batch =
                    generate_batch(&mut m, images.len(), &[0], EOS, &s, &mut || {}).unwrap();
                assert_eq!(batch, alone, "beams {beams}, max {max}");
            }
        }
        // The images do differ (else the test shows nothing).
        let s = settings(1, 8);
        let alone: Vec<Vec<u32>> = [0, 1, 3]
            .iter()
            .map(|&k| generate(&mut PerImage::new(&[k]), &[0], EOS, &s, &mut || {}).unwrap())
            .collect();
        assert_ne!(alone[0], alone[1]);
        assert_ne!(alone[1].len(), alone[2].len());
    }

    #[test]
    fn finished_images_leave_the_batch() {
        let images = [0, 1, 3];
        let s = settings(1, 8);
        let new_tokens: Vec<usize> = images
            .iter()
            .map(|&k| {
                generate(&mut PerImage::new(&[k]), &[0], EOS, &s, &mut || {})
                    .unwrap()
                    .len()
                    - 1
            })
            .collect();
        let mut m = PerImage::new(&images);
        generate_batch(&mut m, images.len(), &[0], EOS, &s, &mut || {}).unwrap();
        // Alone, an image with n new tokens takes n calls (the prefill, then
        // one per token but the last); in the batch, call c has its row
        // while c < n.
        let want: Vec<usize> = (0..*new_tokens.iter().max().unwrap())
            .map(|c| new_tokens.iter().filter(|&&n| n > c).count())
            .collect();
        assert!(want.windows(2).any(|w| w[1] < w[0]), "{new_tokens:?}");
        assert_eq!(m.calls, want);
        assert_eq!(
            generate_batch(&mut m, 0, &[0], EOS, &s, &mut || {})
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn helpers_match_torch_conventions() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        let l = log_softmax(&[0.0, 0.0]);
        assert!((l[0] - 0.5f32.ln()).abs() < 1e-7);
    }
}
