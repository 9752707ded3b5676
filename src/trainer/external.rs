//! ONNX external data: initializers stored in a file beside the graph
//! (`image_encoder.onnx.data`), as `models/export.py` writes full-size
//! encoders so ONNX Runtime holds their weights once. The trainer reads
//! them into the graph to train on, and `trainer merge` writes merged
//! weights back in the same layout.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path};

use candle_onnx::onnx::{GraphProto, StringStringEntryProto, TensorProto};

/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: i32 = 1;

/// Where an initializer's bytes lie.
struct Place {
    location: String,
    offset: u64,
    length: Option<u64>,
}

fn place(t: &TensorProto) -> Result<Option<Place>, String> {
    if t.data_location != EXTERNAL && t.external_data.is_empty() {
        return Ok(None);
    }
    let get = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    };
    let number = |key: &str| -> Result<Option<u64>, String> {
        get(key)
            .map(|v| v.parse().map_err(|_| format!("external data {key} '{v}'")))
            .transpose()
    };
    let location = get("location").ok_or("external data without a location")?;
    // Only files beside the graph: a location is a name, not a path out.
    let path = Path::new(location);
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "external data location '{location}' leaves the model directory"
        ));
    }
    Ok(Some(Place {
        location: location.to_string(),
        offset: number("offset")?.unwrap_or(0),
        length: number("length")?,
    }))
}

/// Reads every external initializer of `graph` (files relative to `dir`)
/// into its `raw_data`; returns the names of those that were external, with
/// their data file.
pub fn inline(graph: &mut GraphProto, dir: &Path) -> Result<Vec<(String, String)>, String> {
    let mut files: HashMap<String, File> = HashMap::new();
    let mut moved = Vec::new();
    for t in &mut graph.initializer {
        let Some(p) = place(t).map_err(|e| format!("initializer '{}': {e}", t.name))? else {
            continue;
        };
        let path = dir.join(&p.location);
        let file = match files.entry(p.location.clone()) {
            std::collections::hash_map::Entry::Occupied(f) => f.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(File::open(&path).map_err(|e| format!("'{}': {e}", path.display()))?)
            }
        };
        let length = match p.length {
            Some(n) => n,
            None => file
                .metadata()
                .map_err(|e| format!("'{}': {e}", path.display()))?
                .len()
                .saturating_sub(p.offset),
        };
        let mut bytes = vec![0u8; length as usize];
        file.seek(SeekFrom::Start(p.offset))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| {
                format!(
                    "initializer '{}': {} bytes at {} of '{}': {e}",
                    t.name,
                    length,
                    p.offset,
                    path.display()
                )
            })?;
        t.raw_data = bytes;
        t.external_data.clear();
        t.data_location = 0;
        moved.push((t.name.clone(), p.location));
    }
    Ok(moved)
}

/// Writes the `raw_data` of the initializers named in `external` to their
/// data files in `dir` (created afresh, in graph order, each tensor at an
/// offset aligned to 4 KiB as onnx's own writer may align them) and leaves
/// references in the graph.
pub fn externalize(
    graph: &mut GraphProto,
    dir: &Path,
    external: &[(String, String)],
) -> Result<(), String> {
    let where_to: HashMap<&str, &str> = external
        .iter()
        .map(|(n, l)| (n.as_str(), l.as_str()))
        .collect();
    let mut files: HashMap<String, (File, u64)> = HashMap::new();
    for t in &mut graph.initializer {
        let Some(&location) = where_to.get(t.name.as_str()) else {
            continue;
        };
        let path = dir.join(location);
        let (file, len) = match files.entry(location.to_string()) {
            std::collections::hash_map::Entry::Occupied(f) => f.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert((
                File::create(&path).map_err(|e| format!("'{}': {e}", path.display()))?,
                0,
            )),
        };
        let offset = len.div_ceil(4096) * 4096;
        let write = |file: &mut File| -> std::io::Result<()> {
            file.seek(SeekFrom::Start(offset))?;
            file.write_all(&t.raw_data)
        };
        write(file).map_err(|e| format!("'{}': {e}", path.display()))?;
        *len = offset + t.raw_data.len() as u64;
        let entry = |key: &str, value: String| StringStringEntryProto {
            key: key.into(),
            value,
        };
        t.external_data = vec![
            entry("location", location.to_string()),
            entry("offset", offset.to_string()),
            entry("length", t.raw_data.len().to_string()),
        ];
        t.data_location = EXTERNAL;
        t.raw_data = Vec::new();
    }
    for (location, (file, _)) in files {
        file.sync_all()
            .map_err(|e| format!("'{}': {e}", dir.join(location).display()))?;
    }
    Ok(())
}
