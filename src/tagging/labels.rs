//! Label sets: what zero-shot tags exist and the prompts that describe them.
//!
//! ```toml
//! [weather]
//! templates = ["a dashcam photo of a road in {} weather."]
//! [weather.classes]
//! clear = ["clear", "sunny"]
//! foggy = ["foggy"]
//! ```
//! Every phrase goes into every template; the class embedding is the mean of
//! the normalised prompt embeddings (prompt ensemble). Sets and classes keep
//! their file order.

use std::path::{Path, PathBuf};

use super::TaggingError;

/// Marks where a class phrase goes in a template.
pub const PLACEHOLDER: &str = "{}";

/// One class of a label set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelClass {
    /// Class name as reported (`foggy`).
    pub name: String,
    /// Phrases put into the templates (`foggy`, `hazy`).
    pub phrases: Vec<String>,
}

/// A group of mutually exclusive classes scored together (softmax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSet {
    /// Set name (`weather`).
    pub name: String,
    /// Prompt templates with one `{}` each.
    pub templates: Vec<String>,
    /// Classes in file order.
    pub classes: Vec<LabelClass>,
}

impl LabelSet {
    /// The prompts of one class: every phrase in every template, phrase-major.
    /// Must match `class_prompts()` in `models/export.py`.
    pub fn class_prompts(&self, class: &LabelClass) -> Vec<String> {
        class
            .phrases
            .iter()
            .flat_map(|p| {
                self.templates
                    .iter()
                    .map(move |t| t.replace(PLACEHOLDER, p))
            })
            .collect()
    }
}

/// All label sets of a labels file, and the file's raw bytes (cache key).
#[derive(Debug, Clone)]
pub struct LabelSets {
    /// Where they were read from.
    pub path: PathBuf,
    /// Sets in file order.
    pub sets: Vec<LabelSet>,
    /// The file's content, hashed into the text-embedding cache key.
    pub source: String,
}

impl LabelSets {
    /// Reads and validates a labels file.
    pub fn from_file(path: &Path) -> Result<Self, TaggingError> {
        let source = std::fs::read_to_string(path).map_err(|e| TaggingError::Labels {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::parse(path, &source)
    }

    /// Parses and validates labels text; `path` is only used in messages.
    pub fn parse(path: &Path, source: &str) -> Result<Self, TaggingError> {
        let fail = |message: String| TaggingError::Labels {
            path: path.to_path_buf(),
            message,
        };
        let table: toml::Table = toml::from_str(source)
            .map_err(|e| fail(crate::models::manifest::one_line(&e.to_string())))?;
        let mut sets = Vec::new();
        for (set_name, body) in &table {
            let body = body
                .as_table()
                .ok_or_else(|| fail(format!("label set '{set_name}' must be a table")))?;
            for key in body.keys() {
                if key != "templates" && key != "classes" {
                    return Err(fail(format!(
                        "label set '{set_name}': unknown key '{key}' (expected templates, classes)"
                    )));
                }
            }
            let templates = string_list(body.get("templates")).ok_or_else(|| {
                fail(format!(
                    "label set '{set_name}': 'templates' must be a list of strings"
                ))
            })?;
            if templates.is_empty() {
                return Err(fail(format!("label set '{set_name}' has no templates")));
            }
            if let Some(t) = templates
                .iter()
                .find(|t| t.matches(PLACEHOLDER).count() != 1)
            {
                return Err(fail(format!(
                    "label set '{set_name}': template {t:?} must contain exactly one {{}}"
                )));
            }
            let classes_table =
                body.get("classes")
                    .and_then(|c| c.as_table())
                    .ok_or_else(|| {
                        fail(format!(
                            "label set '{set_name}' has no [{set_name}.classes] table"
                        ))
                    })?;
            if classes_table.len() < 2 {
                return Err(fail(format!(
                    "label set '{set_name}' needs at least two classes"
                )));
            }
            let mut classes = Vec::new();
            for (class_name, phrases) in classes_table {
                let phrases = string_list(Some(phrases)).ok_or_else(|| {
                    fail(format!("label set '{set_name}', class '{class_name}': phrases must be a list of strings"))
                })?;
                if phrases.is_empty() {
                    return Err(fail(format!(
                        "label set '{set_name}', class '{class_name}' is empty (no phrases)"
                    )));
                }
                if phrases.iter().any(|p| p.trim().is_empty()) {
                    return Err(fail(format!(
                        "label set '{set_name}', class '{class_name}' has an empty phrase"
                    )));
                }
                classes.push(LabelClass {
                    name: class_name.clone(),
                    phrases,
                });
            }
            sets.push(LabelSet {
                name: set_name.clone(),
                templates,
                classes,
            });
        }
        if sets.is_empty() {
            return Err(fail("no label sets defined".into()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            sets,
            source: source.to_string(),
        })
    }
}

fn string_list(value: Option<&toml::Value>) -> Option<Vec<String>> {
    value?
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<LabelSets, TaggingError> {
        LabelSets::parse(Path::new("labels.toml"), s)
    }

    #[test]
    fn keeps_file_order_and_expands_prompts() {
        let sets = parse(
            "[weather]\ntemplates = [\"a {} day.\", \"{} weather\"]\n[weather.classes]\nsunny = [\"sunny\", \"clear\"]\nfoggy = [\"foggy\"]\n\
             [alpha]\ntemplates = [\"{}\"]\n[alpha.classes]\nz = [\"z\"]\na = [\"a\"]\n",
        )
        .unwrap();
        assert_eq!(
            sets.sets
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["weather", "alpha"]
        );
        let w = &sets.sets[0];
        assert_eq!(w.classes[0].name, "sunny");
        assert_eq!(
            w.class_prompts(&w.classes[0]),
            [
                "a sunny day.",
                "sunny weather",
                "a clear day.",
                "clear weather"
            ]
        );
        assert_eq!(
            sets.sets[1]
                .classes
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["z", "a"]
        );
    }

    #[test]
    fn empty_class_is_an_error_naming_set_and_class() {
        let e = parse(
            "[weather]\ntemplates = [\"{}\"]\n[weather.classes]\nclear = [\"clear\"]\nfoggy = []\n",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("labels.toml") && msg.contains("'weather'") && msg.contains("'foggy'"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn invalid_files_are_rejected_with_one_line_messages() {
        for (text, needle) in [
            (
                "[w]\ntemplates = [\"no placeholder\"]\n[w.classes]\na=[\"a\"]\nb=[\"b\"]\n",
                "exactly one {}",
            ),
            (
                "[w]\ntemplates = []\n[w.classes]\na=[\"a\"]\nb=[\"b\"]\n",
                "no templates",
            ),
            (
                "[w]\ntemplates = [\"{}\"]\n[w.classes]\na=[\"a\"]\n",
                "at least two",
            ),
            (
                "[w]\ntemplates = [\"{}\"]\ncolour = 1\n[w.classes]\na=[\"a\"]\nb=[\"b\"]\n",
                "unknown key 'colour'",
            ),
            (
                "[w]\ntemplates = [\"{}\"]\n[w.classes]\na=[\"a\"]\nb=[\" \"]\n",
                "empty phrase",
            ),
            (
                "[w]\ntemplates = [\"{}\"]\n[w.classes]\na=\"a\"\nb=[\"b\"]\n",
                "list of strings",
            ),
            ("", "no label sets"),
            ("[w\n", "labels.toml"),
        ] {
            let msg = parse(text).unwrap_err().to_string();
            assert!(msg.contains(needle), "{msg} should mention {needle}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn shipped_labels_file_has_the_required_sets() {
        let sets = LabelSets::from_file(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/labels.toml"
        )))
        .unwrap();
        let find = |n: &str| sets.sets.iter().find(|s| s.name == n).unwrap();
        let names = |n: &str| {
            find(n)
                .classes
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names("weather"),
            ["clear", "overcast", "rainy", "snowy", "foggy"]
        );
        assert_eq!(names("time_of_day"), ["daytime", "dawn_dusk", "night"]);
        assert_eq!(
            names("scene"),
            [
                "highway",
                "city_street",
                "residential",
                "parking_lot",
                "tunnel",
                "gas_station",
                "rural_road"
            ]
        );
        assert_eq!(names("road_surface"), ["dry", "wet", "snow_covered"]);
        assert!(
            sets.sets.iter().all(|s| s.templates.len() >= 2),
            "every set needs a prompt ensemble"
        );
    }
}
