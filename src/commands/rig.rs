//! Rig arguments of the commands: `replay --rig NAME ROLE=FILE...`,
//! `tag --rig ROLE=IMAGE...`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use roadrep::config::RoadrepConfig;
use roadrep::fuse::config::{RigConfig, RigLayout, RigRole, check_name};
use roadrep::replay::rig::RigViewFile;

use super::cli::ReplayArgs;

/// A rig replay: its layout and one file per role.
pub struct RigReplayPlan {
    pub layout: RigLayout,
    pub views: Vec<RigViewFile>,
}

/// `ROLE=VALUE`; errors name the argument.
fn role_value<'a>(arg: &'a str, what: &str) -> anyhow::Result<(&'a str, &'a str)> {
    let (role, value) = arg
        .split_once('=')
        .filter(|(r, v)| !r.is_empty() && !v.is_empty())
        .with_context(|| format!("{what} '{arg}': expected ROLE={}", what.to_uppercase()))?;
    check_name("role", role).map_err(|e| anyhow::anyhow!("{what} '{arg}': {e}"))?;
    Ok((role, value))
}

/// The camera a rig's role is stored as: the `[[streams]]` entry with that
/// rig and role, else `RIG-ROLE`.
fn camera_of(config: &RoadrepConfig, rig: &str, role: &str) -> String {
    config
        .streams
        .iter()
        .find(|s| s.rig.as_deref() == Some(rig) && s.role.as_deref() == Some(role))
        .map_or_else(|| format!("{rig}-{role}"), |s| s.name.clone())
}

/// The settings of a rig: its `[[rigs]]` table, else defaults.
fn rig_config(config: &RoadrepConfig, rig: &str) -> RigConfig {
    config
        .rigs
        .iter()
        .find(|r| r.name == rig)
        .cloned()
        .unwrap_or(RigConfig {
            name: rig.to_string(),
            anchor: None,
            tolerance_ms: None,
            max_wait_ms: 500,
        })
}

/// Checks `replay --rig` arguments and lays out the rig.
pub fn replay_plan(
    config: &RoadrepConfig,
    rig: &str,
    args: &ReplayArgs,
    sample_fps: f64,
) -> anyhow::Result<RigReplayPlan> {
    anyhow::ensure!(
        args.camera.is_none(),
        "--camera does not apply with --rig: each role is stored as its own camera"
    );
    let mut views: Vec<RigViewFile> = Vec::new();
    for f in &args.files {
        let arg = f.to_string_lossy();
        let (role, file) = role_value(&arg, "file")?;
        anyhow::ensure!(
            !views.iter().any(|v| v.role == role),
            "file '{arg}': role '{role}' is given twice"
        );
        views.push(RigViewFile {
            role: role.to_string(),
            camera: camera_of(config, rig, role),
            file: PathBuf::from(file),
            start_ns: None,
        });
    }
    for s in &args.start {
        let (role, time) = role_value(s, "start")?;
        let view = views
            .iter_mut()
            .find(|v| v.role == role)
            .with_context(|| format!("--start '{s}': no file has role '{role}'"))?;
        view.start_ns = Some(
            roadrep::search::parse_time(time).map_err(|e| anyhow::anyhow!("--start '{s}': {e}"))?,
        );
    }
    let roles = views
        .iter()
        .map(|v| RigRole {
            role: v.role.clone(),
            camera: v.camera.clone(),
        })
        .collect();
    let layout = RigLayout::new(
        &rig_config(config, rig),
        roles,
        (1e9 / sample_fps) as u64,
        false,
    )
    .map_err(|e| anyhow::anyhow!("--rig: {e}"))?;
    Ok(RigReplayPlan { layout, views })
}

/// One image of `tag --rig`.
pub struct StillView {
    /// Role in the rig.
    pub role: String,
    /// Capture time from its name, ns.
    pub ts_ns: Option<i64>,
    /// The image.
    pub path: PathBuf,
}

/// `tag --rig` images: role and time from `ROLE=IMAGE` or from nuScenes
/// names, in the order given.
pub fn still_views(images: &[PathBuf]) -> anyhow::Result<Vec<StillView>> {
    let mut out: Vec<StillView> = Vec::new();
    for img in images {
        let arg = img.to_string_lossy();
        let named = roadrep::fuse::names::parse_view_name(Path::new(&*arg));
        let view = match (named, arg.split_once('=')) {
            (_, Some(_)) if !Path::new(&*arg).exists() => {
                let (role, file) = role_value(&arg, "image")?;
                StillView {
                    role: role.to_string(),
                    ts_ns: None,
                    path: PathBuf::from(file),
                }
            }
            (Some(n), _) => StillView {
                role: n.role,
                ts_ns: Some(n.ts_ns),
                path: img.clone(),
            },
            (None, _) => anyhow::bail!(
                "image '{arg}': give it as ROLE=IMAGE (or a nuScenes name <log>__<CAM>__<microseconds>.jpg)"
            ),
        };
        check_name("role", &view.role).map_err(|e| anyhow::anyhow!("image '{arg}': {e}"))?;
        out.push(view);
    }
    Ok(out)
}
