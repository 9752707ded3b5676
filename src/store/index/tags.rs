//! Each slot's top class per label set, so tag filters are checked in
//! memory during a scan (the exact scan reads them from the `tags` tree).
//!
//! A column per label set, a row per slot; class ids are positions in the
//! column's class list plus one (0: the frame has no tag of that set).

use crate::store::TagRecord;

/// Top class and its score per (slot, label set).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TagTable {
    /// Label set names, one per column.
    pub(super) sets: Vec<String>,
    /// Class names per column.
    pub(super) classes: Vec<Vec<String>>,
    /// Rows (slots).
    pub(super) rows: usize,
    /// `slot * columns + column` -> class id (0: none).
    pub(super) class: Vec<u16>,
    /// `slot * columns + column` -> the top class's probability.
    pub(super) score: Vec<f32>,
}

/// One tag condition resolved to ids: the frame's top class of a column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TagCondition {
    pub column: usize,
    pub class: u16,
}

impl TagTable {
    fn columns(&self) -> usize {
        self.sets.len()
    }

    /// Rows for `slots` slots (new rows untagged).
    pub fn resize(&mut self, slots: usize) {
        self.rows = slots;
        let n = slots * self.columns();
        self.class.resize(n, 0);
        self.score.resize(n, 0.0);
    }

    /// Sets a slot's row from its tags, adding unseen sets and classes.
    pub fn set_row(&mut self, slot: usize, tags: &TagRecord) {
        let ids: Vec<(usize, u16, f32)> = tags
            .sets
            .iter()
            .filter_map(|t| {
                let column = self.column_or_add(&t.set);
                let class = self.class_or_add(column, &t.top)?;
                Some((column, class, t.score))
            })
            .collect();
        let k = self.columns();
        let row = slot * k..(slot + 1) * k;
        self.class[row.clone()].fill(0);
        self.score[row].fill(0.0);
        for (column, class, score) in ids {
            self.class[slot * k + column] = class;
            self.score[slot * k + column] = score;
        }
    }

    /// Clears a slot's row.
    pub fn clear_row(&mut self, slot: usize) {
        let k = self.columns();
        self.class[slot * k..(slot + 1) * k].fill(0);
    }

    /// `(set, class)` as ids; `None` when no stored frame has that tag
    /// (then no frame matches it).
    pub fn condition(&self, set: &str, class: &str) -> Option<TagCondition> {
        let column = self.sets.iter().position(|s| s == set)?;
        let class = self.classes[column].iter().position(|c| c == class)?;
        Some(TagCondition {
            column,
            class: class as u16 + 1,
        })
    }

    /// Whether a slot's top class of each condition's set is that class,
    /// with at least `min_score`.
    pub fn matches(
        &self,
        slot: usize,
        conditions: &[TagCondition],
        min_score: Option<f32>,
    ) -> bool {
        let k = self.columns();
        conditions.iter().all(|c| {
            let i = slot * k + c.column;
            self.class[i] == c.class && min_score.is_none_or(|m| self.score[i] >= m)
        })
    }

    fn column_or_add(&mut self, set: &str) -> usize {
        if let Some(c) = self.sets.iter().position(|s| s == set) {
            return c;
        }
        // A new label set widens every row (rare: the label file changed).
        let old = self.columns();
        self.class = widen(&self.class, old, self.rows, 0);
        self.score = widen(&self.score, old, self.rows, 0.0);
        self.sets.push(set.to_string());
        self.classes.push(Vec::new());
        old
    }

    fn class_or_add(&mut self, column: usize, class: &str) -> Option<u16> {
        let classes = &mut self.classes[column];
        if let Some(i) = classes.iter().position(|c| c == class) {
            return Some(i as u16 + 1);
        }
        // u16 ids: a set with more classes than that is not a label set.
        if classes.len() >= usize::from(u16::MAX) - 1 {
            return None;
        }
        classes.push(class.to_string());
        Some(classes.len() as u16)
    }
}

/// `rows` rows of `old` columns, each with one more column set to `fill`.
fn widen<T: Copy>(v: &[T], old: usize, rows: usize, fill: T) -> Vec<T> {
    let mut out = Vec::with_capacity(rows * (old + 1));
    for r in 0..rows {
        out.extend_from_slice(&v[r * old..(r + 1) * old]);
        out.push(fill);
    }
    out
}
