//! Synthetic CLIP-like embeddings for `bench search`: clustered the way
//! dash-cam frames are, not uniform (a uniform cloud in 512 dimensions has
//! no near neighbours and flatters or ruins an index at random).
//!
//! A frame is the normalised sum of four independent parts, with these
//! shares of its squared length:
//! - 0.45 a direction common to all images (CLIP image embeddings sit in a
//!   narrow cone: unrelated images score ~0.45);
//! - 0.25 its scene type, one of `SCENES` (highway, city at night, ...):
//!   frames of one type, seen on different drives, score ~0.7;
//! - 0.20 its segment: each camera runs through segments of 20 to 200
//!   frames (10 s to 100 s at 2 frames/s), each of a random scene type;
//!   frames of one segment score ~0.9;
//! - 0.10 its own noise.
//!
//! Two kinds of query: image queries (a new frame of a new segment of a
//! random type: their neighbours are that type's frames) and text queries
//! (a direction of their own plus the scene type's: they score ~0.22 with
//! its frames and ~0 with others, as CLIP text queries score low with
//! every image and the top ten come out of thousands of near ties).

use crate::rng::SplitMix64;

/// Scene types.
pub const SCENES: usize = 256;
/// Tag classes: scene type modulo this (a tag filter of one class keeps
/// 1/8 of the frames, correlated with the embeddings as real tags are).
pub const TAG_CLASSES: usize = 8;
const COMMON: f32 = 0.45;
const SCENE: f32 = 0.25;
const SEGMENT: f32 = 0.20;
const NOISE: f32 = 0.10;

/// Where a frame comes from.
#[derive(Debug, Clone, Copy)]
pub struct FrameMeta {
    /// Camera index.
    pub camera: u32,
    /// Index of the frame in its camera's timeline (2 frames/s).
    pub step: u32,
    /// Scene type.
    pub scene: u32,
}

/// The fixed directions of a synthetic store.
pub struct Generator {
    dim: usize,
    rng: SplitMix64,
    common: Vec<f32>,
    text_common: Vec<f32>,
    scenes: Vec<Vec<f32>>,
    /// Per camera: (scene type, segment vector, frames left).
    cameras: Vec<(u32, Vec<f32>, u32)>,
}

impl Generator {
    /// A generator for `cameras` cameras, deterministic in `seed`.
    pub fn new(dim: usize, cameras: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let common = scaled_unit(&mut rng, dim, COMMON.sqrt());
        let text_common = scaled_unit(&mut rng, dim, 1.0);
        let scenes = (0..SCENES)
            .map(|_| gaussian_vec(&mut rng, dim, (SCENE / dim as f32).sqrt()))
            .collect();
        Self {
            dim,
            rng,
            common,
            text_common,
            scenes,
            cameras: vec![(0, Vec::new(), 0); cameras],
        }
    }

    /// The next frame of `camera` (normalised), and its scene type.
    pub fn frame(&mut self, camera: usize, out: &mut [f32]) -> u32 {
        if self.cameras[camera].2 == 0 {
            let scene = self.rng.below(SCENES) as u32;
            let segment = gaussian_vec(&mut self.rng, self.dim, (SEGMENT / self.dim as f32).sqrt());
            let len = 20 + self.rng.below(181) as u32;
            self.cameras[camera] = (scene, segment, len);
        }
        let (scene, segment, left) = &mut self.cameras[camera];
        *left -= 1;
        let noise = (NOISE / self.dim as f32).sqrt();
        let s = &self.scenes[*scene as usize];
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.common[i] + s[i] + segment[i] + noise * gaussian(&mut self.rng);
        }
        normalize(out);
        *scene
    }

    /// An image query: a frame of a new segment of a random scene type.
    pub fn image_query(&mut self) -> Vec<f32> {
        let scene = self.rng.below(SCENES);
        let segment = gaussian_vec(&mut self.rng, self.dim, (SEGMENT / self.dim as f32).sqrt());
        let noise = (NOISE / self.dim as f32).sqrt();
        let mut q: Vec<f32> = (0..self.dim)
            .map(|i| {
                self.common[i]
                    + self.scenes[scene][i]
                    + segment[i]
                    + noise * gaussian(&mut self.rng)
            })
            .collect();
        normalize(&mut q);
        q
    }

    /// A text query: its own direction, the scene type's, and some noise.
    pub fn text_query(&mut self) -> Vec<f32> {
        let scene = self.rng.below(SCENES);
        let mut s = self.scenes[scene].clone();
        normalize(&mut s);
        let r = scaled_unit(&mut self.rng, self.dim, 1.0);
        let mut q: Vec<f32> = (0..self.dim)
            .map(|i| 0.8 * self.text_common[i] + 0.45 * s[i] + 0.35 * r[i])
            .collect();
        normalize(&mut q);
        q
    }
}

fn gaussian(rng: &mut SplitMix64) -> f32 {
    // Box-Muller (one of the pair: simpler, and fast enough here).
    let u = rng.next_f32().max(f32::MIN_POSITIVE);
    let v = rng.next_f32();
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

fn gaussian_vec(rng: &mut SplitMix64, dim: usize, std: f32) -> Vec<f32> {
    (0..dim).map(|_| std * gaussian(rng)).collect()
}

fn scaled_unit(rng: &mut SplitMix64, dim: usize, len: f32) -> Vec<f32> {
    let mut v = gaussian_vec(rng, dim, 1.0);
    normalize(&mut v);
    v.iter_mut().for_each(|x| *x *= len);
    v
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}
