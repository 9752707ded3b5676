//! int8 codes of embeddings: one scale per vector (its largest magnitude
//! maps to 127), so a code keeps every component to within half a step and
//! an approximate dot product is one integer dot product and one multiply.

/// Fills `out` with the int8 code of `v` and returns the scale that
/// restores it (`v[i] ≈ scale * out[i]`). A zero or non-finite vector gets
/// scale 0: it scores 0 until the exact re-ranking looks at it.
pub fn quantize(v: &[f32], out: &mut [i8]) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        out.fill(0);
        return 0.0;
    }
    let inv = 127.0 / max;
    for (o, x) in out.iter_mut().zip(v) {
        // `as` saturates and maps NaN to 0.
        *o = (x * inv).round() as i8;
    }
    max / 127.0
}

/// Integer dot product of two codes. Written as a plain sum so the compiler
/// vectorises it (integer addition is associative, unlike f32).
pub fn dot(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

/// The vector a code stands for.
pub fn dequantize(code: &[i8], scale: f32, out: &mut [f32]) {
    for (o, &c) in out.iter_mut().zip(code) {
        *o = f32::from(c) * scale;
    }
}

/// Cosine similarity of two normalised embeddings, as the exact scan
/// computes it (the same summation order, so both give the same score).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
