//! `[[rigs]]`, and the `rig`/`role` of `[[streams]]`, resolved into the
//! layout the assembler works with.
//!
//! ```toml
//! [[streams]]
//! name = "car1-front"
//! source = "rtsp://10.0.0.5/front"
//! rig = "car1"
//! role = "front"
//!
//! [[rigs]]
//! name = "car1"
//! anchor = "front"        # whose sampled frames define the rig's times
//! tolerance_ms = 250      # largest gap of a view to the anchor frame
//! max_wait_ms = 500       # a live record waits this long for its views
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::ingest::config::StreamConfig;

/// Smallest default tolerance: frames of free-running cameras sampled at
/// a high rate are still ~a frame apart (DeepStream's metamux default).
const MIN_DEFAULT_TOLERANCE_MS: f64 = 60.0;
/// Most roles a rig may have (the fusion models have six slots).
pub const MAX_ROLES: usize = 16;

/// One `[[rigs]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RigConfig {
    /// Rig name, as the streams' `rig` names it.
    pub name: String,
    /// Role whose sampled frames define the rig's times; unset: the first
    /// role of the rig's streams, in config order.
    #[serde(default)]
    pub anchor: Option<String>,
    /// Largest time gap of a view to its anchor frame; unset: half the
    /// anchor's sampling interval, at least 60 ms.
    #[serde(default)]
    pub tolerance_ms: Option<f64>,
    /// How long a live record waits for its views before it is written
    /// partial.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
}

fn default_max_wait_ms() -> u64 {
    500
}

/// One role of a rig and the camera (stream) that fills it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RigRole {
    /// Role name (`front`, `back_left`, ...).
    pub role: String,
    /// Stream name.
    pub camera: String,
}

/// A rig resolved against its streams.
#[derive(Debug, Clone, PartialEq)]
pub struct RigLayout {
    /// Rig name.
    pub name: String,
    /// Roles, in config order.
    pub roles: Vec<RigRole>,
    /// Index of the anchor role in `roles`.
    pub anchor: usize,
    /// Largest gap of a view to the anchor frame, ns.
    pub tolerance_ns: i64,
    /// How long a record waits for its views when its streams are live.
    pub max_wait: Duration,
    /// Whether the deadline applies: live streams. A replay waits for each
    /// file's frames by their time instead, so its records do not depend
    /// on how fast each file decodes.
    pub live: bool,
}

impl RigLayout {
    /// A layout from its parts; checks names, the anchor and the limits.
    /// `sample_interval_ns` is the anchor's sampling interval (default
    /// tolerance).
    pub fn new(
        config: &RigConfig,
        roles: Vec<RigRole>,
        sample_interval_ns: u64,
        live: bool,
    ) -> Result<Self, String> {
        let name = &config.name;
        check_name("rig", name)?;
        if roles.is_empty() {
            return Err(format!(
                "rig '{name}' has no streams (set rig = \"{name}\" and a role on its [[streams]])"
            ));
        }
        if roles.len() > MAX_ROLES {
            return Err(format!(
                "rig '{name}' has {} roles; at most {MAX_ROLES}",
                roles.len()
            ));
        }
        for (i, r) in roles.iter().enumerate() {
            check_name("role", &r.role).map_err(|e| format!("rig '{name}': {e}"))?;
            if roles[..i].iter().any(|o| o.role == r.role) {
                return Err(format!(
                    "rig '{name}': role '{}' is given twice (streams '{}' and '{}')",
                    r.role,
                    roles[..i]
                        .iter()
                        .find(|o| o.role == r.role)
                        .map_or("", |o| &o.camera),
                    r.camera
                ));
            }
        }
        let anchor = match &config.anchor {
            None => 0,
            Some(a) => roles.iter().position(|r| &r.role == a).ok_or_else(|| {
                let known: Vec<&str> = roles.iter().map(|r| r.role.as_str()).collect();
                format!(
                    "rig '{name}': anchor '{a}' is none of its roles ({})",
                    known.join(", ")
                )
            })?,
        };
        let tolerance_ms = match config.tolerance_ms {
            Some(t) if !(t.is_finite() && t > 0.0 && t <= 10_000.0) => {
                return Err(format!(
                    "rig '{name}': tolerance_ms {t} must be in (0, 10000]"
                ));
            }
            Some(t) => t,
            None => (sample_interval_ns as f64 / 2e6).max(MIN_DEFAULT_TOLERANCE_MS),
        };
        if config.max_wait_ms == 0 || config.max_wait_ms > 60_000 {
            return Err(format!(
                "rig '{name}': max_wait_ms {} must be in 1..=60000",
                config.max_wait_ms
            ));
        }
        Ok(Self {
            name: name.clone(),
            roles,
            anchor,
            tolerance_ns: (tolerance_ms * 1e6).round() as i64,
            max_wait: Duration::from_millis(config.max_wait_ms),
            live,
        })
    }

    /// The role a camera fills, if any.
    pub fn role_of(&self, camera: &str) -> Option<usize> {
        self.roles.iter().position(|r| r.camera == camera)
    }

    /// The anchor role's name.
    pub fn anchor_role(&self) -> &str {
        &self.roles[self.anchor].role
    }
}

/// Rig and role names go into keys, URLs and camera names: keep them plain.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} name '{name}' must be 1-64 letters, digits, '_' or '-'"
        ))
    }
}

/// The rigs of a config: every rig its streams name, with its `[[rigs]]`
/// settings (defaults when it has no table). `default_fps` is
/// `[ingest] sample_fps`.
pub fn resolve_rigs(
    rigs: &[RigConfig],
    streams: &[StreamConfig],
    default_fps: f64,
) -> Result<Vec<RigLayout>, String> {
    for (i, s) in streams.iter().enumerate() {
        match (&s.rig, &s.role) {
            (Some(_), None) => {
                return Err(format!("streams[{i}] '{}': rig without a role", s.name));
            }
            (None, Some(_)) => {
                return Err(format!("streams[{i}] '{}': role without a rig", s.name));
            }
            _ => {}
        }
    }
    for (i, r) in rigs.iter().enumerate() {
        if rigs[..i].iter().any(|o| o.name == r.name) {
            return Err(format!("rigs[{i}]: duplicate rig name '{}'", r.name));
        }
        if !streams.iter().any(|s| s.rig.as_deref() == Some(&r.name)) {
            return Err(format!(
                "rigs[{i}] '{}': no stream names this rig (set rig = \"{}\" and a role on its [[streams]])",
                r.name, r.name
            ));
        }
    }
    let mut names: Vec<&str> = Vec::new();
    for s in streams {
        if let Some(rig) = s.rig.as_deref()
            && !names.contains(&rig)
        {
            names.push(rig);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let config = rigs
                .iter()
                .find(|r| r.name == name)
                .cloned()
                .unwrap_or(RigConfig {
                    name: name.to_string(),
                    anchor: None,
                    tolerance_ms: None,
                    max_wait_ms: default_max_wait_ms(),
                });
            let members: Vec<&StreamConfig> = streams
                .iter()
                .filter(|s| s.rig.as_deref() == Some(name))
                .collect();
            let roles = members
                .iter()
                .map(|s| RigRole {
                    role: s.role.clone().unwrap_or_default(),
                    camera: s.name.clone(),
                })
                .collect::<Vec<_>>();
            let anchor_stream = config
                .anchor
                .as_deref()
                .and_then(|a| members.iter().find(|s| s.role.as_deref() == Some(a)))
                .unwrap_or(&members[0]);
            let fps = anchor_stream.sample_fps.unwrap_or(default_fps);
            // Live when any view is: the deadline keeps a dead camera from
            // blocking the others.
            let live = members
                .iter()
                .any(|s| s.validate().map(|k| k.is_live()).unwrap_or(false));
            RigLayout::new(&config, roles, (1e9 / fps) as u64, live)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(name: &str, rig: Option<&str>, role: Option<&str>) -> StreamConfig {
        let text = format!("name = \"{name}\"\nsource = \"rtsp://h/{name}\"");
        let mut s: StreamConfig = toml::from_str(&text).unwrap();
        s.rig = rig.map(str::to_string);
        s.role = role.map(str::to_string);
        s
    }

    fn rig(name: &str, anchor: Option<&str>) -> RigConfig {
        RigConfig {
            name: name.into(),
            anchor: anchor.map(str::to_string),
            tolerance_ms: None,
            max_wait_ms: 500,
        }
    }

    #[test]
    fn resolves_roles_anchor_and_default_tolerance() {
        let streams = [
            stream("a", Some("car1"), Some("front")),
            stream("b", None, None),
            stream("c", Some("car1"), Some("back")),
        ];
        let rigs = resolve_rigs(&[rig("car1", Some("back"))], &streams, 2.0).unwrap();
        assert_eq!(rigs.len(), 1);
        let r = &rigs[0];
        assert_eq!(r.roles.len(), 2);
        assert_eq!(r.anchor_role(), "back");
        // Half of 500 ms.
        assert_eq!(r.tolerance_ns, 250_000_000);
        assert!(r.live);
        assert_eq!(r.role_of("c"), Some(1));
        // 25 fps: half is 20 ms, raised to 60.
        let rigs = resolve_rigs(&[], &streams, 25.0).unwrap();
        assert_eq!(rigs[0].tolerance_ns, 60_000_000);
        assert_eq!(rigs[0].anchor_role(), "front");
    }

    #[test]
    fn errors_name_the_rig_and_the_field() {
        let streams = [
            stream("a", Some("car1"), Some("front")),
            stream("c", Some("car1"), Some("front")),
        ];
        let e = resolve_rigs(&[], &streams, 2.0).unwrap_err();
        assert!(e.contains("role 'front' is given twice"), "{e}");
        let streams = [stream("a", Some("car1"), Some("front"))];
        let e = resolve_rigs(&[rig("car1", Some("back"))], &streams, 2.0).unwrap_err();
        assert!(
            e.contains("anchor 'back' is none of its roles (front)"),
            "{e}"
        );
        let e = resolve_rigs(&[rig("car2", None)], &streams, 2.0).unwrap_err();
        assert!(e.contains("'car2': no stream names this rig"), "{e}");
        let e = resolve_rigs(&[], &[stream("a", Some("car1"), None)], 2.0).unwrap_err();
        assert!(e.contains("rig without a role"), "{e}");
        let e = resolve_rigs(&[], &[stream("a", Some("car 1"), Some("x"))], 2.0).unwrap_err();
        assert!(e.contains("rig name 'car 1'"), "{e}");
        let mut bad = rig("car1", None);
        bad.tolerance_ms = Some(-1.0);
        let e = resolve_rigs(&[bad], &streams, 2.0).unwrap_err();
        assert!(e.contains("tolerance_ms -1"), "{e}");
    }
}
