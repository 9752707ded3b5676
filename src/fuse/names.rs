//! Role and time from file names: nuScenes names its camera images
//! `<log>__<CAM_NAME>__<microseconds>.jpg`, which is all a rig needs.

use std::path::Path;

/// What a nuScenes-style file name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedView {
    /// The recording (log) the image belongs to.
    pub log: String,
    /// Role: the camera name lower-cased without `CAM_` (`front_left`).
    pub role: String,
    /// Capture time, ns since the epoch.
    pub ts_ns: i64,
}

/// Parses `<log>__<CAM_NAME>__<microseconds>.<ext>`; `None` when the name
/// has another form.
pub fn parse_view_name(path: &Path) -> Option<NamedView> {
    let stem = path.file_stem()?.to_str()?;
    let mut parts = stem.rsplitn(3, "__");
    let micros: i64 = parts.next()?.parse().ok()?;
    let camera = parts.next()?;
    let log = parts.next()?;
    if log.is_empty() || camera.is_empty() {
        return None;
    }
    let role = camera
        .strip_prefix("CAM_")
        .unwrap_or(camera)
        .to_ascii_lowercase();
    Some(NamedView {
        log: log.to_string(),
        role,
        ts_ns: micros.checked_mul(1000)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nuscenes_names() {
        let v = parse_view_name(Path::new(
            "/x/n015-2018-07-24-11-22-45+0800__CAM_BACK_LEFT__1532402927647423.jpg",
        ))
        .unwrap();
        assert_eq!(v.log, "n015-2018-07-24-11-22-45+0800");
        assert_eq!(v.role, "back_left");
        assert_eq!(v.ts_ns, 1_532_402_927_647_423_000);
        // A prefix before the log stays part of it (another log).
        let v = parse_view_name(Path::new(
            "tests__n015-2018-07-18-11-07-57+0800__CAM_BACK_LEFT__1531883530447423.jpg",
        ))
        .unwrap();
        assert_eq!(v.log, "tests__n015-2018-07-18-11-07-57+0800");
        assert!(parse_view_name(Path::new("front.jpg")).is_none());
        assert!(parse_view_name(Path::new("a__b__notanumber.jpg")).is_none());
    }
}
