use std::time::Duration;

use super::*;
use crate::fuse::config::{RigConfig, RigRole};

const MS: i64 = 1_000_000;

fn layout(roles: &[&str], live: bool) -> Arc<RigLayout> {
    let roles = roles
        .iter()
        .map(|r| RigRole {
            role: r.to_string(),
            camera: format!("car1-{r}"),
        })
        .collect();
    let config = RigConfig {
        name: "car1".into(),
        anchor: None,
        tolerance_ms: Some(100.0),
        max_wait_ms: 500,
    };
    Arc::new(RigLayout::new(&config, roles, 500 * MS as u64, live).unwrap())
}

fn frame(role: usize, ts_ms: i64) -> ViewFrame {
    ViewFrame {
        stream_id: role as u32 + 1,
        ts_ns: ts_ms * MS,
        pts_ns: (ts_ms * MS) as u64,
        embedding: vec![role as f32; 4].into(),
    }
}

/// Views' times in ms (None: absent), per record.
fn times(records: &[AssembledRig]) -> Vec<(i64, Vec<Option<i64>>)> {
    records
        .iter()
        .map(|r| {
            (
                r.anchor_ns / MS,
                r.views
                    .iter()
                    .map(|v| v.as_ref().map(|f| f.ts_ns / MS))
                    .collect(),
            )
        })
        .collect()
}

/// Feeds (role, ms) frames in the given order, then ends every role.
fn run(a: &mut RigAssembler, frames: &[(usize, i64)]) -> Vec<AssembledRig> {
    let now = Instant::now();
    let mut out = Vec::new();
    for &(role, ms) in frames {
        out.extend(a.push(role, frame(role, ms), now));
    }
    for r in 0..a.layout().roles.len() {
        out.extend(a.role_ended(r, now));
    }
    out.extend(a.finish());
    out
}

/// Front every 500 ms from 0; back 30 ms later; side 480 ms later (only
/// the nearest within 100 ms matches: side's frame at t+480 is 20 ms
/// before the next anchor).
fn three_cameras() -> Vec<Vec<(usize, i64)>> {
    let per_role: Vec<Vec<(usize, i64)>> = [0, 30, 480]
        .iter()
        .enumerate()
        .map(|(role, off)| (0..10).map(|i| (role, i * 500 + off)).collect())
        .collect();
    per_role
}

#[test]
fn one_record_per_anchor_frame_with_the_nearest_views() {
    let mut a = RigAssembler::new(layout(&["front", "back", "side"], false));
    let roles = three_cameras();
    let interleaved: Vec<_> = (0..10)
        .flat_map(|i| roles.iter().map(move |r| r[i]))
        .collect();
    let records = run(&mut a, &interleaved);
    assert_eq!(records.len(), 10);
    let t = times(&records);
    assert_eq!(t[0], (0, vec![Some(0), Some(30), None]));
    for (i, (anchor, views)) in t.iter().enumerate().skip(1) {
        let i = i as i64;
        assert_eq!(*anchor, i * 500);
        assert_eq!(
            views,
            &vec![Some(i * 500), Some(i * 500 + 30), Some(i * 500 - 20)]
        );
    }
    assert_eq!(a.counters().records, 10);
    assert_eq!(a.counters().partial, 1);
    assert_eq!(a.counters().missing, vec![0, 0, 1]);
    assert_eq!(records[1].closed_by, RecordClose::Complete);
    assert_eq!(records[0].closed_by, RecordClose::ViewsPassed);
}

#[test]
fn records_do_not_depend_on_which_camera_decodes_first() {
    let roles = three_cameras();
    let interleaved: Vec<_> = (0..10)
        .flat_map(|i| roles.iter().map(move |r| r[i]))
        .collect();
    let reference = times(&run(
        &mut RigAssembler::new(layout(&["front", "back", "side"], false)),
        &interleaved,
    ));
    for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1]] {
        let frames: Vec<_> = order.iter().flat_map(|&r| roles[r].clone()).collect();
        let mut a = RigAssembler::new(layout(&["front", "back", "side"], false));
        assert_eq!(times(&run(&mut a, &frames)), reference, "order {order:?}");
        assert_eq!(a.counters().late, 0);
    }
}

#[test]
fn a_role_whose_source_ended_is_absent_and_blocks_nothing() {
    let mut a = RigAssembler::new(layout(&["front", "back"], false));
    let now = Instant::now();
    assert!(a.push(0, frame(0, 0), now).is_empty(), "waits for back");
    let out = a.role_ended(1, now);
    assert_eq!(times(&out), vec![(0, vec![Some(0), None])]);
    // Later anchors go out at once.
    let out = a.push(0, frame(0, 500), now);
    assert_eq!(times(&out), vec![(500, vec![Some(500), None])]);
    // The role comes back: it is waited for again.
    assert!(a.push(1, frame(1, 990), now).is_empty());
    // A frame at or after the anchor may still be nearer: it waits.
    assert!(a.push(0, frame(0, 1000), now).is_empty());
    // As near as the one before: the earlier wins.
    assert_eq!(
        times(&a.push(1, frame(1, 1010), now)),
        vec![(1000, vec![Some(1000), Some(990)])]
    );
}

#[test]
fn views_beyond_the_tolerance_are_absent_not_invented() {
    let mut a = RigAssembler::new(layout(&["front", "back"], false));
    let records = run(&mut a, &[(0, 0), (1, 101), (0, 500), (1, 600)]);
    assert_eq!(
        times(&records),
        vec![(0, vec![Some(0), None]), (500, vec![Some(500), Some(600)])]
    );
}

#[test]
fn a_stalled_live_camera_gives_partial_records_after_max_wait_and_late_frames_are_counted() {
    let mut a = RigAssembler::new(layout(&["front", "back"], true));
    let t0 = Instant::now();
    assert!(a.push(0, frame(0, 0), t0).is_empty());
    assert!(a.poll(t0 + Duration::from_millis(499)).is_empty());
    let out = a.poll(t0 + Duration::from_millis(500));
    assert_eq!(times(&out), vec![(0, vec![Some(0), None])]);
    assert_eq!(out[0].closed_by, RecordClose::Deadline);
    // The stalled frame arrives: it would have joined, so it is late.
    let late = t0 + Duration::from_millis(600);
    assert!(a.push(1, frame(1, 20), late).is_empty());
    assert_eq!(a.counters().late, 1);
    // A replay (not live) never times out.
    let mut r = RigAssembler::new(layout(&["front", "back"], false));
    r.push(0, frame(0, 0), t0);
    assert!(r.poll(t0 + Duration::from_secs(3600)).is_empty());
    assert_eq!(r.pending(), 1);
}

#[test]
fn buffers_stay_bounded_when_a_camera_runs_far_ahead() {
    let mut a = RigAssembler::new(layout(&["front", "back"], false));
    let now = Instant::now();
    for i in 0..(MAX_BUFFERED_FRAMES as i64 + 10) {
        a.push(1, frame(1, i * 500), now);
    }
    assert_eq!(a.counters().overflow, 10);
    // Anchors far behind: their frames were dropped, the rest match.
    let out = a.push(0, frame(0, 20 * 500), now);
    assert_eq!(
        times(&out),
        vec![(10_000, vec![Some(10_000), Some(10_000)])]
    );
    // An anchor back in time (another recording) finds its views gone.
    let out = a.push(0, frame(0, 0), now);
    assert_eq!(times(&out), vec![(0, vec![Some(0), None])]);
}
