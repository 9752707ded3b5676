//! BDD100K labels to template captions, as the BLIP-2/BDD100K project did:
//! "It is a night scene in rainy weather on a highway road. The traffic light
//! is red. There are 3 cars. There is one truncated pedestrian."
//!
//! Reads the image-level attributes (`timeofday`, `weather`, `scene`), counts
//! objects per category with their `occluded` / `truncated` flags, and names
//! the traffic-light colour with red over yellow over green. Both the 2018
//! label files (`trafficLightColor: "red"`) and the Scalabel `det_20` files
//! (`"R"`) are read; lanes and drivable areas are not objects and are left
//! out. The attributes also become `labels` (`weather`, `time_of_day`,
//! `scene`, class names as in `config/labels.toml`) for zero-shot accuracy.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::TrainerError;
use super::dataset::Sample;

/// One frame of a BDD100K label file.
#[derive(Debug, Clone, Deserialize)]
pub struct Frame {
    /// Image file name.
    pub name: String,
    /// Image-level attributes.
    #[serde(default)]
    pub attributes: FrameAttributes,
    /// Objects (and lanes / drivable areas, which are ignored).
    #[serde(default)]
    pub labels: Option<Vec<Label>>,
}

/// `weather`, `scene`, `timeofday` of a frame.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FrameAttributes {
    /// `clear`, `rainy`, ... or `undefined`.
    #[serde(default)]
    pub weather: Option<String>,
    /// `highway`, `city street`, ...
    #[serde(default)]
    pub scene: Option<String>,
    /// `daytime`, `night`, `dawn/dusk`.
    #[serde(default)]
    pub timeofday: Option<String>,
}

/// One labelled object.
#[derive(Debug, Clone, Deserialize)]
pub struct Label {
    /// `car`, `pedestrian`, `traffic light`, ...
    pub category: String,
    /// Per-object flags.
    #[serde(default)]
    pub attributes: LabelAttributes,
}

/// Per-object flags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelAttributes {
    /// Partly hidden by another object.
    #[serde(default)]
    pub occluded: bool,
    /// Cut by the image border.
    #[serde(default)]
    pub truncated: bool,
    /// Traffic lights: `red`/`R`, `yellow`/`Y`, `green`/`G`, `none`/`NA`.
    #[serde(default)]
    pub traffic_light_color: Option<String>,
}

/// Categories that are not countable objects.
const NOT_OBJECTS: [&str; 2] = ["drivable area", "lane"];
/// Categories in caption order; others follow alphabetically.
const ORDER: [&str; 12] = [
    "car",
    "bus",
    "truck",
    "train",
    "pedestrian",
    "person",
    "rider",
    "bicycle",
    "bike",
    "motorcycle",
    "motor",
    "traffic light",
];

fn defined(v: &Option<String>) -> Option<&str> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "undefined")
}

fn noun(category: &str, n: usize) -> String {
    let singular = match category {
        "person" => "pedestrian",
        "bike" => "bicycle",
        "motor" => "motorcycle",
        other => other,
    };
    if n == 1 {
        return singular.to_string();
    }
    match singular {
        "bus" => "buses".into(),
        s if s.ends_with('s') => s.to_string(),
        s => format!("{s}s"),
    }
}

fn scene_phrase(scene: &str) -> String {
    match scene {
        "highway" => "on a highway road".into(),
        "city street" => "on a city street".into(),
        "residential" => "on a residential road".into(),
        "parking lot" => "in a parking lot".into(),
        "tunnel" => "in a tunnel".into(),
        "gas stations" => "at a gas station".into(),
        other => format!("on a {other} road"),
    }
}

fn light_rank(color: &str) -> Option<(u8, &'static str)> {
    match color.to_ascii_lowercase().as_str() {
        "red" | "r" => Some((0, "red")),
        "yellow" | "y" => Some((1, "yellow")),
        "green" | "g" => Some((2, "green")),
        _ => None,
    }
}

/// The template caption of one frame.
pub fn caption(frame: &Frame) -> String {
    let a = &frame.attributes;
    let mut first = String::from("It is a");
    match defined(&a.timeofday) {
        Some("dawn/dusk") => first.push_str(" dawn or dusk"),
        Some(t) => first.push_str(&format!(" {t}")),
        None => first.push_str(" driving"),
    }
    first.push_str(" scene");
    if let Some(w) = defined(&a.weather) {
        first.push_str(&format!(" in {w} weather"));
    }
    if let Some(s) = defined(&a.scene) {
        first.push_str(&format!(" {}", scene_phrase(s)));
    }
    first.push('.');
    let mut sentences = vec![first];

    let objects: Vec<&Label> = frame
        .labels
        .iter()
        .flatten()
        .filter(|l| {
            !NOT_OBJECTS.contains(&l.category.as_str())
                && !l.category.starts_with("lane/")
                && !l.category.starts_with("area/")
        })
        .collect();
    let light = objects
        .iter()
        .filter(|l| l.category == "traffic light")
        .filter_map(|l| {
            l.attributes
                .traffic_light_color
                .as_deref()
                .and_then(light_rank)
        })
        .min();
    if let Some((_, color)) = light {
        sentences.push(format!("The traffic light is {color}."));
    }

    // (count, occluded, truncated) per category.
    let mut counts: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for l in &objects {
        let c = counts.entry(l.category.as_str()).or_default();
        c.0 += 1;
        c.1 += l.attributes.occluded as usize;
        c.2 += l.attributes.truncated as usize;
    }
    let mut cats: Vec<&str> = counts.keys().copied().collect();
    cats.sort_by_key(|c| (ORDER.iter().position(|o| o == c).unwrap_or(ORDER.len()), *c));
    for cat in cats {
        let (n, occ, tru) = counts[cat];
        let adjective = if occ == n && tru == n {
            "occluded and truncated "
        } else if occ == n && tru == 0 {
            "occluded "
        } else if tru == n && occ == 0 {
            "truncated "
        } else {
            ""
        };
        if n == 1 {
            sentences.push(format!("There is one {adjective}{}.", noun(cat, 1)));
            continue;
        }
        let mut s = format!("There are {n} {adjective}{}", noun(cat, n));
        if adjective.is_empty() && (occ > 0 || tru > 0) {
            let mut parts = Vec::new();
            if occ > 0 {
                parts.push(format!("{occ} occluded"));
            }
            if tru > 0 {
                parts.push(format!("{tru} truncated"));
            }
            s.push_str(&format!(", {}", parts.join(" and ")));
        }
        s.push('.');
        sentences.push(s);
    }
    sentences.join(" ")
}

/// A BDD100K attribute value as a class name of `config/labels.toml`.
pub fn class_name(value: &str) -> String {
    match value {
        "gas stations" => "gas_station".into(),
        other => other
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect(),
    }
}

/// Label-set classes of a frame (`weather`, `time_of_day`, `scene`).
pub fn labels(frame: &Frame) -> BTreeMap<String, String> {
    let a = &frame.attributes;
    let mut out = BTreeMap::new();
    for (set, value) in [
        ("weather", &a.weather),
        ("time_of_day", &a.timeofday),
        ("scene", &a.scene),
    ] {
        if let Some(v) = defined(value) {
            out.insert(set.to_string(), class_name(v));
        }
    }
    out
}

/// Reads a BDD100K label file (a JSON array of frames, or Scalabel's
/// `{"frames": [...]}`); images are `images_dir/name` (default: the file's
/// folder).
pub fn read_bdd100k(path: &Path, images_dir: Option<&Path>) -> Result<Vec<Sample>, TrainerError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum File {
        List(Vec<Frame>),
        Scalabel { frames: Vec<Frame> },
    }
    let frames = match serde_json::from_str::<File>(&text) {
        Ok(File::List(f)) | Ok(File::Scalabel { frames: f }) => f,
        Err(e) => {
            return Err(TrainerError::Dataset {
                path: path.to_path_buf(),
                line: Some(e.line()),
                message: format!("not a BDD100K label file: {e}"),
            });
        }
    };
    let dir = images_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
    Ok(frames
        .iter()
        .map(|f| Sample {
            image: dir.join(&f.name),
            caption: caption(f),
            labels: labels(f),
            origin: (path.to_path_buf(), None),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(json: &str) -> Frame {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn issue_example() {
        let f = frame(
            r#"{"name": "a.jpg",
                "attributes": {"weather": "rainy", "scene": "highway", "timeofday": "night"},
                "labels": [
                  {"category": "car", "attributes": {"occluded": false, "truncated": false}},
                  {"category": "car", "attributes": {"occluded": false, "truncated": false}},
                  {"category": "car", "attributes": {"occluded": false, "truncated": false}},
                  {"category": "traffic light", "attributes": {"trafficLightColor": "green"}},
                  {"category": "traffic light", "attributes": {"trafficLightColor": "red"}},
                  {"category": "pedestrian", "attributes": {"truncated": true}},
                  {"category": "drivable area"}, {"category": "lane"}
                ]}"#,
        );
        assert_eq!(
            caption(&f),
            "It is a night scene in rainy weather on a highway road. The traffic light is red. \
             There are 3 cars. There is one truncated pedestrian. There are 2 traffic lights."
        );
        let l = labels(&f);
        assert_eq!(l["weather"], "rainy");
        assert_eq!(l["time_of_day"], "night");
        assert_eq!(l["scene"], "highway");
    }

    #[test]
    fn mixed_flags_scalabel_colours_and_undefined() {
        let f = frame(
            r#"{"name": "b.jpg",
                "attributes": {"weather": "undefined", "scene": "city street", "timeofday": "dawn/dusk"},
                "labels": [
                  {"category": "car", "attributes": {"occluded": true}},
                  {"category": "car", "attributes": {"truncated": true}},
                  {"category": "car", "attributes": {}},
                  {"category": "bus", "attributes": {"occluded": true}},
                  {"category": "bus", "attributes": {"occluded": true}},
                  {"category": "traffic light", "attributes": {"trafficLightColor": "G"}},
                  {"category": "traffic light", "attributes": {"trafficLightColor": "Y"}}
                ]}"#,
        );
        assert_eq!(
            caption(&f),
            "It is a dawn or dusk scene on a city street. The traffic light is yellow. \
             There are 3 cars, 1 occluded and 1 truncated. There are 2 occluded buses. \
             There are 2 traffic lights."
        );
        let l = labels(&f);
        assert!(!l.contains_key("weather"));
        assert_eq!(l["time_of_day"], "dawn_dusk");
        assert_eq!(l["scene"], "city_street");
    }

    #[test]
    fn empty_frame() {
        let f = frame(r#"{"name": "c.jpg"}"#);
        assert_eq!(caption(&f), "It is a driving scene.");
    }
}
