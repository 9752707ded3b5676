//! The index file: one per model, `<store>/search-index/<model>.ivf`.
//!
//! Layout, little-endian: the magic, a header (postcard, length first:
//! which store and model it belongs to, the store write it covers, sizes,
//! label names), the arrays of [`IvfIndex`] one after the other (per slot:
//! keys, lists, tags; then per list, list after list: its entries' slots,
//! scales and codes), and a CRC-32 of all of it. It is written to a temporary file, synced and
//! renamed, so a crash leaves the old file or the new one, never half of
//! one; a file that does not check out is rebuilt.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ivf::{IvfIndex, NO_LIST};
use super::lists::List;
use super::tags::TagTable;
use crate::store::FrameKey;

/// The last byte is the format's version: 2 stores codes list by list
/// (1, codes in slot order, is rebuilt from the store).
const MAGIC: &[u8; 8] = b"RRIVF\0\0\x02";
/// Largest header accepted (label names and ids are small).
const MAX_HEADER: usize = 16 << 20;

/// Whose index a file is, and how far it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileMeta {
    /// The store's id (`meta` tree): an index of another store is stale.
    pub store_id: String,
    /// The embedding tree it indexes (the model).
    pub tree: String,
    /// Every store write up to this log sequence number is in it.
    pub watermark: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    meta: FileMeta,
    dim: u32,
    slots: u64,
    /// Held slots (list entries).
    live: u64,
    lists: u32,
    trained_for: u64,
    tag_sets: Vec<String>,
    tag_classes: Vec<Vec<String>>,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Writes `index` to `path` (atomically, see the module doc); returns its
/// size in bytes.
pub fn write(path: &Path, meta: &FileMeta, index: &IvfIndex) -> io::Result<u64> {
    let tmp = path.with_extension("ivf.tmp");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = File::create(&tmp)?;
    let mut w = Checked {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
        bytes: 0,
    };
    let header = Header {
        meta: meta.clone(),
        dim: index.dim as u32,
        slots: index.slots() as u64,
        live: index.len() as u64,
        lists: (index.centroids.len() / index.dim) as u32,
        trained_for: index.trained_for as u64,
        tag_sets: index.tags.sets.clone(),
        tag_classes: index.tags.classes.clone(),
    };
    let header = postcard::to_stdvec(&header).map_err(|e| invalid(e.to_string()))?;
    w.write_all(MAGIC)?;
    w.write_all(&(header.len() as u32).to_le_bytes())?;
    w.write_all(&header)?;
    write_all(&mut w, &index.centroids, |x| x.to_le_bytes())?;
    write_all(&mut w, &index.keys, |k| k.encode())?;
    write_all(&mut w, &index.list_of, |x| x.to_le_bytes())?;
    write_all(&mut w, &index.tags.class, |x| x.to_le_bytes())?;
    write_all(&mut w, &index.tags.score, |x| x.to_le_bytes())?;
    for list in index.lists() {
        write_all(&mut w, &list.slots, |x| x.to_le_bytes())?;
    }
    for list in index.lists() {
        write_all(&mut w, &list.scales, |x| x.to_le_bytes())?;
    }
    for list in index.lists() {
        write_all(&mut w, &list.codes, |x| x.to_le_bytes())?;
    }
    let crc = w.crc.clone().finalize();
    let bytes = w.bytes + 4;
    let mut inner = w.inner;
    inner.write_all(&crc.to_le_bytes())?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // The rename itself must reach the disk before the log is pruned.
        File::open(dir)?.sync_all()?;
    }
    Ok(bytes)
}

fn write_all<T, const N: usize>(
    w: &mut impl Write,
    items: &[T],
    bytes: impl Fn(&T) -> [u8; N],
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(64 << 10);
    for chunk in items.chunks((64 << 10) / N) {
        buf.clear();
        for x in chunk {
            buf.extend_from_slice(&bytes(x));
        }
        w.write_all(&buf)?;
    }
    Ok(())
}

/// Reads an index file. `NotFound` when there is none, `InvalidData` when
/// it is damaged or of another format.
pub fn read(path: &Path) -> io::Result<(FileMeta, IvfIndex)> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut r = Checked {
        inner: BufReader::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
        bytes: 0,
    };
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a roadrep index file of this version"));
    }
    let header_len = u32::from_le_bytes(read_array(&mut r)?) as usize;
    if header_len > MAX_HEADER {
        return Err(invalid("header too large"));
    }
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header)?;
    let h: Header = postcard::from_bytes(&header).map_err(|e| invalid(e.to_string()))?;
    let (dim, n, k) = (h.dim as usize, h.slots as usize, h.tag_sets.len());
    let live = h.live;
    // Check the size before allocating what the header claims.
    let expected = 8
        + 4
        + header_len as u64
        + (h.lists as u64 * dim as u64 * 4)
        + n as u64 * (12 + 4)
        + (n * k) as u64 * 6
        + live * (4 + 4 + dim as u64)
        + 4;
    if dim == 0 || len != expected || h.tag_classes.len() != k || live > n as u64 {
        return Err(invalid(format!("{len} bytes, the header says {expected}")));
    }
    let centroids = read_vec(&mut r, h.lists as usize * dim, f32::from_le_bytes)?;
    let keys = read_vec(&mut r, n, |b: [u8; 12]| {
        FrameKey::decode(&b).expect("12 bytes decode")
    })?;
    let list_of = read_vec(&mut r, n, u32::from_le_bytes)?;
    let class = read_vec(&mut r, n * k, u16::from_le_bytes)?;
    let score = read_vec(&mut r, n * k, f32::from_le_bytes)?;
    // The lists' sizes follow from the slots' lists (checked again, with
    // the entries, by `from_parts`).
    let lists = (h.lists as usize).max(1);
    let mut sizes = vec![0usize; lists];
    for &l in list_of.iter().filter(|&&l| l != NO_LIST) {
        *sizes
            .get_mut(l as usize)
            .ok_or_else(|| invalid(format!("list {l} of {lists}")))? += 1;
    }
    if sizes.iter().sum::<usize>() as u64 != live {
        return Err(invalid("the lists do not hold the held slots"));
    }
    let mut lists = vec![List::default(); lists];
    for (list, &e) in lists.iter_mut().zip(&sizes) {
        list.slots = read_vec(&mut r, e, u32::from_le_bytes)?;
    }
    for (list, &e) in lists.iter_mut().zip(&sizes) {
        list.scales = read_vec(&mut r, e, f32::from_le_bytes)?;
    }
    for (list, &e) in lists.iter_mut().zip(&sizes) {
        let mut codes = vec![0u8; e * dim];
        r.read_exact(&mut codes)?;
        // Same size, so this reuses the buffer.
        list.codes = codes.into_iter().map(|b| b as i8).collect();
    }
    let crc = r.crc.clone().finalize();
    let stored = u32::from_le_bytes(read_array(&mut r.inner)?);
    if crc != stored {
        return Err(invalid("checksum mismatch"));
    }
    let tags = TagTable {
        sets: h.tag_sets,
        classes: h.tag_classes,
        rows: n,
        class,
        score,
    };
    let index = IvfIndex::from_parts(
        dim,
        keys,
        list_of,
        tags,
        centroids,
        h.trained_for as usize,
        lists,
    )
    .map_err(invalid)?;
    Ok((h.meta, index))
}

fn read_array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn read_vec<T, const N: usize>(
    r: &mut impl Read,
    n: usize,
    from: impl Fn([u8; N]) -> T,
) -> io::Result<Vec<T>> {
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; (64 << 10) / N * N];
    let mut left = n;
    while left > 0 {
        let take = left.min(buf.len() / N);
        r.read_exact(&mut buf[..take * N])?;
        out.extend(
            buf[..take * N]
                .chunks_exact(N)
                .map(|c| from(c.try_into().expect("N bytes"))),
        );
        left -= take;
    }
    Ok(out)
}

/// A reader or writer that keeps a CRC-32 of the bytes passing through.
struct Checked<T> {
    inner: T,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Checked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}
