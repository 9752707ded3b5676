//! Frame sampling by timestamp.
//!
//! The sampler keeps the first frame at or after each point of a grid
//! `k / fps` (k = 0, 1, 2, ...), so a variable frame rate gives the same
//! sampled times as a constant one, a gap in the stream skips the grid
//! points inside it (one frame per grid cell, never a burst), and a
//! resumed replay picks exactly the frames an uninterrupted one would.

/// Decides which frames to keep.
#[derive(Debug, Clone)]
pub struct FrameSampler {
    interval_ns: u64,
    next_ns: u64,
}

impl FrameSampler {
    /// The grid step of a rate, ns.
    pub fn interval_ns(fps: f64) -> u64 {
        (1e9 / fps).round().max(1.0) as u64
    }

    /// A sampler at `fps` frames per second (> 0).
    pub fn new(fps: f64) -> Self {
        Self {
            interval_ns: Self::interval_ns(fps),
            next_ns: 0,
        }
    }

    /// A sampler that continues after a frame already kept at `last_pts_ns`.
    pub fn resume_after(fps: f64, last_pts_ns: u64) -> Self {
        let mut s = Self::new(fps);
        s.next_ns = s.next_after(last_pts_ns);
        s
    }

    fn next_after(&self, pts_ns: u64) -> u64 {
        (pts_ns / self.interval_ns + 1) * self.interval_ns
    }

    /// Whether to keep the frame at `pts_ns`.
    pub fn accept(&mut self, pts_ns: u64) -> bool {
        if pts_ns < self.next_ns {
            return false;
        }
        self.next_ns = self.next_after(pts_ns);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn keeps_the_first_frame_of_each_grid_cell() {
        // 25 fps for 8.84 s (221 frames) at 2 fps: cells 0..=17 -> 18 frames.
        let mut s = FrameSampler::new(2.0);
        let kept: Vec<u64> = (0..221u64)
            .map(|i| i * 40 * MS)
            .filter(|&p| s.accept(p))
            .collect();
        assert_eq!(kept.len(), 18);
        assert_eq!(&kept[..4], &[0, 520 * MS, 1000 * MS, 1520 * MS]);
    }

    #[test]
    fn variable_frame_rate_and_gaps_give_one_frame_per_cell() {
        let mut s = FrameSampler::new(1.0);
        let pts = [0, 100, 900, 1000, 1001, 1500, 4200, 4300, 5000].map(|ms| ms * MS);
        let kept: Vec<u64> = pts.into_iter().filter(|&p| s.accept(p)).collect();
        assert_eq!(kept, [0, 1000, 4200, 5000].map(|ms| ms * MS));
    }

    #[test]
    fn resuming_picks_what_an_uninterrupted_run_picks() {
        let frames: Vec<u64> = (0..300u64).map(|i| i * 33_366_667).collect(); // 29.97 fps
        let mut all = FrameSampler::new(2.0);
        let full: Vec<u64> = frames.iter().copied().filter(|&p| all.accept(p)).collect();
        let cut = full[7];
        let mut resumed = FrameSampler::resume_after(2.0, cut);
        let rest: Vec<u64> = frames
            .iter()
            .copied()
            .filter(|&p| p > cut && resumed.accept(p))
            .collect();
        assert_eq!(rest, full[8..]);
    }
}
