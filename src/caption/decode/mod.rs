//! Greedy and beam-search decoding, as transformers' `generate` does them
//! (transformers 5, batch of one image), so captions match it token for
//! token:
//! - greedy: the repetition penalty applies to the raw logits, then argmax
//!   (first index on ties);
//! - beam search: log-softmax, then the repetition penalty on the
//!   log-probabilities, `2 * num_beams` candidates per step, finished
//!   hypotheses scored by `sum logprob / generated_len ^ length_penalty`,
//!   and transformers' early-stop heuristic (`early_stopping = false`);
//! - the repetition penalty covers every token of the row, prompt included;
//! - `max_new_tokens` counts tokens after the prompt; the end token is kept.

use super::CaptionError;

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
    if settings.num_beams <= 1 {
        greedy(model, prompt, eos, settings, pace)
    } else {
        beam_search(model, prompt, eos, settings, pace)
    }
}

fn greedy(
    model: &mut dyn StepModel,
    prompt: &[u32],
    eos: u32,
    settings: &GenerationSettings,
    pace: &mut dyn FnMut(),
) -> Result<Vec<u32>, CaptionError> {
    let mut ids = prompt.to_vec();
    pace();
    let mut logits = first_row(model.forward(&[prompt])?)?;
    loop {
        repetition_penalty(&mut logits, &ids, settings.repetition_penalty);
        let next = argmax(&logits);
        ids.push(next);
        if next == eos || ids.len() - prompt.len() >= settings.max_new_tokens {
            return Ok(ids);
        }
        pace();
        logits = first_row(model.forward(&[&[next]])?)?;
    }
}

/// One candidate continuation of a beam step.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f32,
    beam: usize,
    token: u32,
}

fn beam_search(
    model: &mut dyn StepModel,
    prompt: &[u32],
    eos: u32,
    settings: &GenerationSettings,
    pace: &mut dyn FnMut(),
) -> Result<Vec<u32>, CaptionError> {
    const MASKED: f32 = -1.0e9;
    let beams = settings.num_beams;
    let keep = 2 * beams;
    let prompt_len = prompt.len();
    let max_len = prompt_len + settings.max_new_tokens;
    let lp = settings.length_penalty;

    // Every beam starts as the prompt; only the first one counts at first.
    let mut running: Vec<(Vec<u32>, f32)> = (0..beams)
        .map(|i| (prompt.to_vec(), if i == 0 { 0.0 } else { MASKED }))
        .collect();
    // (sequence, score, finished)
    let mut finished: Vec<(Vec<u32>, f32, bool)> =
        (0..beams).map(|_| (Vec::new(), MASKED, false)).collect();
    let mut improvable = true;

    pace();
    let first = first_row(model.forward(&[prompt])?)?;
    model.select(&vec![0; beams])?;
    let mut logits = vec![first; beams];
    let mut cur_len = prompt_len;
    loop {
        let mut candidates = Vec::with_capacity(beams * logits[0].len());
        for (b, row) in logits.iter().enumerate() {
            let mut scores = log_softmax(row);
            repetition_penalty(&mut scores, &running[b].0, settings.repetition_penalty);
            let base = running[b].1;
            candidates.extend(scores.iter().enumerate().map(|(t, s)| Candidate {
                score: s + base,
                beam: b,
                token: t as u32,
            }));
        }
        let top = top_k(candidates, keep);
        let ends: Vec<bool> = top
            .iter()
            .map(|c| c.token == eos || cur_len + 1 >= max_len)
            .collect();

        // Beams that go on: the best candidates that did not end.
        let mut going: Vec<(f32, usize)> = top
            .iter()
            .zip(&ends)
            .enumerate()
            .map(|(j, (c, end))| (c.score + if *end { MASKED } else { 0.0 }, j))
            .collect();
        going.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        going.truncate(beams);

        // Hypotheses that ended among the first `beams` candidates compete
        // with the finished ones, length-normalised.
        let norm = ((cur_len + 1 - prompt_len) as f64).powf(lp as f64) as f32;
        let mut merged: Vec<(Vec<u32>, f32, bool)> = std::mem::take(&mut finished);
        for (j, (c, end)) in top.iter().zip(&ends).enumerate() {
            let mut score = c.score / norm;
            if !improvable {
                score += MASKED;
            }
            let done = *end && j < beams;
            if !done {
                score += MASKED;
            }
            let mut seq = running[c.beam].0.clone();
            seq.push(c.token);
            merged.push((seq, score, done));
        }
        let mut order: Vec<usize> = (0..merged.len()).collect();
        order.sort_by(|&a, &b| merged[b].1.total_cmp(&merged[a].1).then(a.cmp(&b)));
        finished = order
            .into_iter()
            .take(beams)
            .map(|i| merged[i].clone())
            .collect();

        let next: Vec<(Vec<u32>, f32)> = going
            .iter()
            .map(|&(score, j)| {
                let c = top[j];
                let mut seq = running[c.beam].0.clone();
                seq.push(c.token);
                (seq, score)
            })
            .collect();
        let sources: Vec<usize> = going.iter().map(|&(_, j)| top[j].beam).collect();
        running = next;
        cur_len += 1;

        // transformers' heuristic: stop once no running beam can beat the
        // worst finished one (only when every slot has finished).
        let best_possible = running[0].1 / ((cur_len - prompt_len) as f64).powf(lp as f64) as f32;
        let worst = finished.iter().map(|f| f.1).fold(f32::INFINITY, f32::min);
        improvable &= finished
            .iter()
            .any(|f| best_possible > if f.2 { worst } else { MASKED });
        if !improvable || ends.iter().all(|e| *e) {
            break;
        }
        model.select(&sources)?;
        pace();
        let last: Vec<[u32; 1]> = running
            .iter()
            .map(|(s, _)| [*s.last().expect("prompt is not empty")])
            .collect();
        let rows: Vec<&[u32]> = last.iter().map(|r| r.as_slice()).collect();
        logits = model.forward(&rows)?;
    }
    Ok(finished.swap_remove(0).0)
}

fn first_row(mut rows: Vec<Vec<f32>>) -> Result<Vec<f32>, CaptionError> {
    if rows.is_empty() {
        return Err(CaptionError::Image("the decoder returned no logits".into()));
    }
    Ok(rows.swap_remove(0))
}

/// The `k` best candidates, best first (ties: lower index first).
fn top_k(mut candidates: Vec<Candidate>, k: usize) -> Vec<Candidate> {
    let k = k.min(candidates.len());
    let cmp = |a: &Candidate, b: &Candidate| {
        b.score
            .total_cmp(&a.score)
            .then((a.beam, a.token).cmp(&(b.beam, b.token)))
    };
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k, cmp);
        candidates.truncate(k);
    }
    candidates.sort_by(cmp);
    candidates
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

    #[test]
    fn helpers_match_torch_conventions() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        let l = log_softmax(&[0.0, 0.0]);
        assert!((l[0] - 0.5f32.ln()).abs() < 1e-7);
    }
}
