//! Search requests: text or image query plus filters, run against the store.
//!
//! The same [`SearchRequest`] serves the HTTP API (query string) and the CLI
//! (which sends it to a running daemon, or opens the store itself). Query
//! embeddings come from the model whose fingerprint names the store's
//! embedding tree, so a query is never compared across embedding spaces.
//!
//! - [`summary`]: segments as summary lines (API and CLI).
//! - [`rigs`]: rig records ranked by their fused embedding (`rig=`);
//!   [`rig_summary`]: scene segments over them.
//! - [`export`]: stored frames -> image-caption dataset (trainer input).

pub mod export;
pub mod rig_summary;
pub mod rigs;
pub mod summary;

use serde::{Deserialize, Serialize};

use crate::models::{ClipModel, ModelError, RgbFrame};
use crate::store::{FrameFilter, SearchHit, Store, StoreError};
use crate::tagging::score::{ClassEmbeddings, l2_normalize};

/// Errors of a search: bad request vs. failures behind it.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The request is malformed (the message names the parameter).
    #[error("{0}")]
    BadRequest(String),
    /// The store failed or the camera is unknown.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The model failed on the query.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Filters and limits shared by every query (query-string form).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Text query (text search); absent for image search and listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Cameras, comma-separated; absent = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    /// Earliest time: RFC 3339 or Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Latest time: RFC 3339 or Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Tag filters `set:class`, comma-separated; all must be the frame's top class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Minimum probability of each filtered tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tag_score: Option<f32>,
    /// Minimum cosine similarity of a hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f32>,
    /// Results wanted (search) or frames listed (listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<usize>,
    /// Rank the records of this rig instead of frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rig: Option<String>,
    /// With `rig`: roles that must be present, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<String>,
}

/// Most results one request may ask for.
pub const MAX_RESULTS: usize = 10_000;
/// Results when `top` is not given.
pub const DEFAULT_TOP: usize = 10;

/// `camera=a,b`: the named cameras; `None` (all) when absent or empty.
pub fn cameras(param: Option<&str>) -> Option<Vec<String>> {
    let names: Vec<String> = param?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    (!names.is_empty()).then_some(names)
}

/// `from` and `to` as ns; errors name the parameter.
pub fn time_range(
    from: &Option<String>,
    to: &Option<String>,
) -> Result<(Option<i64>, Option<i64>), SearchError> {
    let time = |name: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| parse_time(s).map_err(|e| SearchError::BadRequest(format!("{name}: {e}"))))
            .transpose()
    };
    let (from, to) = (time("from", from)?, time("to", to)?);
    if let (Some(a), Some(b)) = (from, to)
        && a > b
    {
        return Err(SearchError::BadRequest("from is after to".into()));
    }
    Ok((from, to))
}

impl SearchRequest {
    /// The store filter this request describes.
    pub fn filter(&self) -> Result<FrameFilter, SearchError> {
        let tags = match self.tag.as_deref() {
            None => Vec::new(),
            Some(t) => t
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|pair| {
                    pair.split_once([':', '='])
                        .map(|(s, c)| (s.trim().to_string(), c.trim().to_string()))
                        .filter(|(s, c)| !s.is_empty() && !c.is_empty())
                        .ok_or_else(|| {
                            SearchError::BadRequest(format!(
                                "tag '{pair}': expected set:class, e.g. weather:foggy"
                            ))
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        let (from_ns, to_ns) = time_range(&self.from, &self.to)?;
        let filter = FrameFilter {
            streams: cameras(self.camera.as_deref()),
            from_ns,
            to_ns,
            tags,
            min_tag_score: self.min_tag_score,
        };
        if let Some(m) = self.min_tag_score
            && !(0.0..=1.0).contains(&m)
        {
            return Err(SearchError::BadRequest(format!(
                "min_tag_score {m} must be a probability in [0, 1]"
            )));
        }
        if let Some(m) = self.min_score
            && !(-1.0..=1.0).contains(&m)
        {
            return Err(SearchError::BadRequest(format!(
                "min_score {m} must be a cosine similarity in [-1, 1]"
            )));
        }
        if filter.min_tag_score.is_some() && filter.tags.is_empty() {
            return Err(SearchError::BadRequest(
                "min_tag_score needs a tag filter".into(),
            ));
        }
        Ok(filter)
    }

    /// Requested result count, bounded.
    pub fn top(&self) -> Result<usize, SearchError> {
        bounded_top(self.top, DEFAULT_TOP)
    }

    /// Checks that every tag filter names a label set and one of its
    /// classes: a typo would otherwise match nothing, silently.
    pub fn check_labels(&self, labels: &ClassEmbeddings) -> Result<(), SearchError> {
        for (set, class) in self.filter()?.tags {
            let Some(s) = labels.sets.iter().find(|s| s.name == set) else {
                let names: Vec<&str> = labels.sets.iter().map(|s| s.name.as_str()).collect();
                return Err(SearchError::BadRequest(format!(
                    "tag '{set}:{class}': no label set '{set}' (sets: {})",
                    names.join(", ")
                )));
            };
            if !s.classes.contains(&class) {
                return Err(SearchError::BadRequest(format!(
                    "tag '{set}:{class}': '{set}' has no class '{class}' (classes: {})",
                    s.classes.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// `top` of a request (or `default`), refused outside `1..=MAX_RESULTS`
/// the same way by every route.
pub fn bounded_top(top: Option<usize>, default: usize) -> Result<usize, SearchError> {
    match top.unwrap_or(default) {
        0 => Err(SearchError::BadRequest("top must be at least 1".into())),
        n if n > MAX_RESULTS => Err(SearchError::BadRequest(format!(
            "top must be at most {MAX_RESULTS}"
        ))),
        n => Ok(n),
    }
}

/// Text search: embeds `req.q` and ranks stored frames by cosine similarity.
pub fn text_search(
    store: &Store,
    model: &ClipModel,
    req: &SearchRequest,
) -> Result<Vec<SearchHit>, SearchError> {
    let q = req.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let q = q.ok_or_else(|| SearchError::BadRequest("q: a text query is required".into()))?;
    let (filter, top) = (req.filter()?, req.top()?);
    let embed = model.get_text_features(&[q])?;
    let query = l2_normalize(embed.row(0));
    Ok(store.search(
        query.as_slice().expect("contiguous"),
        &filter,
        top,
        req.min_score,
    )?)
}

/// Image search: embeds an image and ranks stored frames by similarity.
pub fn image_search(
    store: &Store,
    model: &ClipModel,
    image: &RgbFrame<'_>,
    req: &SearchRequest,
) -> Result<Vec<SearchHit>, SearchError> {
    if req.rig.is_some() {
        return Err(SearchError::BadRequest(
            "rig: rig records are searched by text".into(),
        ));
    }
    let (filter, top) = (req.filter()?, req.top()?);
    let embed = model.embed_frames(std::slice::from_ref(image))?;
    let query = l2_normalize(embed.row(0));
    Ok(store.search(
        query.as_slice().expect("contiguous"),
        &filter,
        top,
        req.min_score,
    )?)
}

/// A time given as RFC 3339 or Unix seconds, in ns since the epoch.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<i64>() {
        return secs
            .checked_mul(1_000_000_000)
            .ok_or_else(|| format!("'{s}' is out of range"));
    }
    if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() || secs.abs() > 9.2e9 {
            return Err(format!("'{s}' is not a finite time"));
        }
        return Ok((secs * 1e9) as i64);
    }
    let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|_| {
        format!("'{s}' is not a time (RFC 3339 like 2026-11-22T08:00:00Z, or Unix seconds)")
    })?;
    t.timestamp_nanos_opt()
        .ok_or_else(|| format!("'{s}' is out of range"))
}

/// ns since the epoch as RFC 3339 (UTC, milliseconds).
pub fn format_time(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filters_and_rejects_bad_ones_by_name() {
        let req = SearchRequest {
            camera: Some("front, rear".into()),
            from: Some("2026-01-02T03:04:05Z".into()),
            to: Some("1767323046".into()),
            tag: Some("weather:foggy,scene=highway".into()),
            ..Default::default()
        };
        let f = req.filter().unwrap();
        assert_eq!(
            f.streams,
            Some(vec!["front".to_string(), "rear".to_string()])
        );
        assert_eq!(f.from_ns, Some(1_767_323_045_000_000_000));
        assert_eq!(f.to_ns, Some(1_767_323_046_000_000_000));
        assert_eq!(
            f.tags,
            vec![
                ("weather".into(), "foggy".into()),
                ("scene".into(), "highway".into())
            ]
        );

        let bad_tag = SearchRequest {
            tag: Some("foggy".into()),
            ..Default::default()
        };
        assert!(
            bad_tag
                .filter()
                .unwrap_err()
                .to_string()
                .contains("tag 'foggy'")
        );
        let bad_time = SearchRequest {
            from: Some("yesterday".into()),
            ..Default::default()
        };
        assert!(
            bad_time
                .filter()
                .unwrap_err()
                .to_string()
                .starts_with("from:")
        );
        let reversed = SearchRequest {
            from: Some("10".into()),
            to: Some("5".into()),
            ..Default::default()
        };
        assert!(reversed.filter().is_err());
        assert!(
            SearchRequest {
                top: Some(0),
                ..Default::default()
            }
            .top()
            .is_err()
        );
        assert_eq!(
            format_time(1_767_323_045_520_000_000),
            "2026-01-02T03:04:05.520Z"
        );
    }
}
