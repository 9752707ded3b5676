//! One image's beam search, advanced one step at a time by the batched
//! driver in [`super`]: the image owns `num_beams` consecutive decoder rows
//! and sees only their logits, so its result does not depend on the other
//! images decoded in the same run.

use super::{GenerationSettings, log_softmax, repetition_penalty};

/// Score of a slot that must never win.
const MASKED: f32 = -1.0e9;

/// One candidate continuation of a beam step.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f32,
    beam: usize,
    token: u32,
}

/// The beam search state of one image.
#[derive(Debug)]
pub(super) struct BeamImage {
    beams: usize,
    prompt_len: usize,
    max_len: usize,
    length_penalty: f32,
    repetition_penalty: f32,
    eos: u32,
    /// (sequence, score) per beam; at first only beam 0 counts.
    running: Vec<(Vec<u32>, f32)>,
    /// (sequence, score, finished), the best `beams` hypotheses so far.
    finished: Vec<(Vec<u32>, f32, bool)>,
    improvable: bool,
    cur_len: usize,
}

impl BeamImage {
    pub(super) fn new(prompt: &[u32], eos: u32, settings: &GenerationSettings) -> Self {
        let beams = settings.num_beams;
        Self {
            beams,
            prompt_len: prompt.len(),
            max_len: prompt.len() + settings.max_new_tokens,
            length_penalty: settings.length_penalty,
            repetition_penalty: settings.repetition_penalty,
            eos,
            running: (0..beams)
                .map(|i| (prompt.to_vec(), if i == 0 { 0.0 } else { MASKED }))
                .collect(),
            finished: (0..beams).map(|_| (Vec::new(), MASKED, false)).collect(),
            improvable: true,
            cur_len: prompt.len(),
        }
    }

    /// Advances by one token given the logits of this image's `beams` rows.
    /// Returns, while the search goes on, which old row each new row
    /// continues (indices within this image's rows); `None` when done.
    pub(super) fn step(&mut self, logits: &[Vec<f32>]) -> Option<Vec<usize>> {
        let beams = self.beams;
        let keep = 2 * beams;
        let lp = self.length_penalty as f64;
        let mut candidates = Vec::with_capacity(beams * logits[0].len());
        for (b, row) in logits.iter().enumerate() {
            let mut scores = log_softmax(row);
            repetition_penalty(&mut scores, &self.running[b].0, self.repetition_penalty);
            let base = self.running[b].1;
            candidates.extend(scores.iter().enumerate().map(|(t, s)| Candidate {
                score: s + base,
                beam: b,
                token: t as u32,
            }));
        }
        let top = top_k(candidates, keep);
        let ends: Vec<bool> = top
            .iter()
            .map(|c| c.token == self.eos || self.cur_len + 1 >= self.max_len)
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
        let norm = ((self.cur_len + 1 - self.prompt_len) as f64).powf(lp) as f32;
        let mut merged = std::mem::take(&mut self.finished);
        for (j, (c, end)) in top.iter().zip(&ends).enumerate() {
            let mut score = c.score / norm;
            if !self.improvable {
                score += MASKED;
            }
            let done = *end && j < beams;
            if !done {
                score += MASKED;
            }
            let mut seq = self.running[c.beam].0.clone();
            seq.push(c.token);
            merged.push((seq, score, done));
        }
        let mut order: Vec<usize> = (0..merged.len()).collect();
        order.sort_by(|&a, &b| merged[b].1.total_cmp(&merged[a].1).then(a.cmp(&b)));
        self.finished = order
            .into_iter()
            .take(beams)
            .map(|i| merged[i].clone())
            .collect();

        let next: Vec<(Vec<u32>, f32)> = going
            .iter()
            .map(|&(score, j)| {
                let c = top[j];
                let mut seq = self.running[c.beam].0.clone();
                seq.push(c.token);
                (seq, score)
            })
            .collect();
        let sources: Vec<usize> = going.iter().map(|&(_, j)| top[j].beam).collect();
        self.running = next;
        self.cur_len += 1;

        // transformers' heuristic: stop once no running beam can beat the
        // worst finished one (only when every slot has finished).
        let best_possible =
            self.running[0].1 / ((self.cur_len - self.prompt_len) as f64).powf(lp) as f32;
        let worst = self
            .finished
            .iter()
            .map(|f| f.1)
            .fold(f32::INFINITY, f32::min);
        self.improvable &= self
            .finished
            .iter()
            .any(|f| best_possible > if f.2 { worst } else { MASKED });
        if !self.improvable || ends.iter().all(|e| *e) {
            None
        } else {
            Some(sources)
        }
    }

    /// The last token of each running beam (the next decoder input).
    pub(super) fn last_tokens(&self) -> impl Iterator<Item = u32> + '_ {
        self.running
            .iter()
            .map(|(s, _)| *s.last().expect("a beam holds at least the prompt"))
    }

    /// The best finished hypothesis.
    pub(super) fn into_best(mut self) -> Vec<u32> {
        self.finished.swap_remove(0).0
    }
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
