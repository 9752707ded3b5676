//! `roadrep tag --rig IMAGE...`: still images as the views of a rig, put
//! together by the same assembler as live rigs (anchor `front` if given,
//! else the first role; nearest view within the tolerance), fused and
//! tagged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use roadrep::config::RoadrepConfig;
use roadrep::fuse::assembler::{AssembledRig, RigAssembler, ViewFrame};
use roadrep::fuse::config::{RigConfig, RigLayout, RigRole};
use roadrep::fuse::fuser::RigFuser;
use roadrep::store::SetTag;
use roadrep::tagging::{SceneTagger, SetScores};
use serde::Serialize;

/// One view as printed.
#[derive(Debug, Serialize)]
struct ViewOut {
    role: String,
    present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_ns: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset_ms: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tags: Vec<SetTag>,
}

/// One rig record as printed.
#[derive(Debug, Serialize)]
struct RecordOut {
    anchor: String,
    anchor_ns: i64,
    views_present: usize,
    views: Vec<ViewOut>,
    fusion: String,
    fusion_fingerprint: String,
    fused_tags: Vec<SetTag>,
}

/// The records of a set of still images.
#[derive(Debug, Serialize)]
pub struct StillRig {
    records: Vec<RecordOut>,
    /// Images in no record: (image, role).
    not_matched: Vec<(PathBuf, String)>,
}

fn tags(scores: Vec<SetScores>) -> Vec<SetTag> {
    scores.into_iter().map(SetTag::from).collect()
}

impl StillRig {
    /// `views`: role, time and image of each image; `embedded`: the images
    /// that decoded, with their normalised embeddings.
    pub fn assemble(
        config: &RoadrepConfig,
        views: &[super::rig::StillView],
        embedded: &[(PathBuf, Vec<f32>)],
        fuser: &RigFuser,
        tagger: &SceneTagger,
    ) -> anyhow::Result<Self> {
        let mut roles: Vec<RigRole> = Vec::new();
        for v in views {
            if !roles.iter().any(|r| r.role == v.role) {
                roles.push(RigRole {
                    role: v.role.clone(),
                    camera: v.role.clone(),
                });
            }
        }
        // The fusion model's order (front, front_left, ...), not the order
        // a shell glob lists the files in.
        roles.sort_by_key(|r| fuser.slot_of(&r.role).unwrap_or(usize::MAX));
        let anchor = roles
            .iter()
            .find(|r| r.role == "front")
            .unwrap_or(&roles[0])
            .role
            .clone();
        let rig = config
            .rigs
            .iter()
            .find(|r| r.anchor.as_deref() == Some(anchor.as_str()));
        let settings = RigConfig {
            name: "rig".into(),
            anchor: Some(anchor),
            tolerance_ms: rig.and_then(|r| r.tolerance_ms),
            max_wait_ms: 500,
        };
        let layout = Arc::new(
            RigLayout::new(&settings, roles, 0, false)
                .map_err(|e| anyhow::anyhow!("--rig: {e}"))?,
        );
        fuser
            .check_roles(&layout)
            .map_err(|e| anyhow::anyhow!("--rig: {e}"))?;
        // Frames by time (each camera's must come in order); image index
        // as the stream id to find them again.
        let mut frames: Vec<(usize, usize, ViewFrame)> = Vec::new();
        for (
            i,
            super::rig::StillView {
                role,
                ts_ns: ts,
                path,
            },
        ) in views.iter().enumerate()
        {
            let Some((_, e)) = embedded.iter().find(|(p, _)| p == path) else {
                continue;
            };
            let r = layout
                .roles
                .iter()
                .position(|x| &x.role == role)
                .unwrap_or(0);
            let ts = ts.unwrap_or(0);
            frames.push((
                r,
                i,
                ViewFrame {
                    stream_id: i as u32,
                    ts_ns: ts,
                    pts_ns: 0,
                    embedding: e.clone().into(),
                },
            ));
        }
        frames.sort_by_key(|(_, i, f)| (f.ts_ns, *i));
        let mut assembler = RigAssembler::new(layout.clone());
        let now = Instant::now();
        let mut records: Vec<AssembledRig> = Vec::new();
        for (r, _, f) in frames {
            records.extend(assembler.push(r, f, now));
        }
        for r in 0..layout.roles.len() {
            records.extend(assembler.role_ended(r, now));
        }
        records.extend(assembler.finish());
        let inputs: Vec<Vec<Option<&[f32]>>> = records
            .iter()
            .map(|a| {
                a.views
                    .iter()
                    .map(|v| v.as_ref().map(|f| &*f.embedding))
                    .collect()
            })
            .collect();
        let fused = fuser.fuse(&layout, &inputs)?;
        let mut used = vec![false; views.len()];
        let records: Vec<RecordOut> = records
            .iter()
            .zip(fused)
            .map(|(a, fused)| RecordOut {
                anchor: layout.anchor_role().to_string(),
                anchor_ns: a.anchor_ns,
                views_present: a.views.iter().flatten().count(),
                views: layout
                    .roles
                    .iter()
                    .zip(&a.views)
                    .map(|(role, v)| match v {
                        Some(f) => {
                            used[f.stream_id as usize] = true;
                            ViewOut {
                                role: role.role.clone(),
                                present: true,
                                image: Some(views[f.stream_id as usize].path.clone()),
                                time_ns: Some(f.ts_ns),
                                offset_ms: Some((f.ts_ns - a.anchor_ns) as f64 / 1e6),
                                tags: tags(tagger.tag(ndarray::ArrayView1::from(&*f.embedding))),
                            }
                        }
                        None => ViewOut {
                            role: role.role.clone(),
                            present: false,
                            image: None,
                            time_ns: None,
                            offset_ms: None,
                            tags: Vec::new(),
                        },
                    })
                    .collect(),
                fusion: fuser.describe(),
                fusion_fingerprint: fuser.fingerprint().to_string(),
                fused_tags: tags(tagger.tag(ndarray::ArrayView1::from(&fused[..]))),
            })
            .collect();
        let not_matched = views
            .iter()
            .zip(&used)
            .filter(|(_, u)| !**u)
            .map(|(v, _)| (v.path.clone(), v.role.clone()))
            .collect();
        Ok(Self {
            records,
            not_matched,
        })
    }

    /// Prints the records (JSON, or a few lines each).
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
            return Ok(());
        }
        let tag_line = |t: &[SetTag]| {
            t.iter()
                .map(|s| format!("{}={} ({:.3})", s.set, s.top, s.score))
                .collect::<Vec<_>>()
                .join("  ")
        };
        for r in &self.records {
            let at = if r.anchor_ns == 0 {
                String::new()
            } else {
                format!(" at {}", roadrep::search::format_time(r.anchor_ns))
            };
            println!(
                "rig record: anchor {}{at}, {} of {} views",
                r.anchor,
                r.views_present,
                r.views.len()
            );
            for v in &r.views {
                match (&v.image, v.offset_ms) {
                    (Some(image), Some(off)) => println!(
                        "  {:<12} {:+8.1} ms  {}\t{}",
                        v.role,
                        off,
                        image.display(),
                        tag_line(&v.tags)
                    ),
                    _ => println!("  {:<12} absent", v.role),
                }
            }
            println!("  fused ({}): {}", r.fusion, tag_line(&r.fused_tags));
        }
        for (p, role) in &self.not_matched {
            println!(
                "not matched: {} ({role}: no anchor frame within the tolerance)",
                p.display()
            );
        }
        Ok(())
    }
}
