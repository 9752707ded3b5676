use super::*;

const FRAME_NS: u64 = 40_000_000; // 25 fps

/// A picture of a generated stream: its presentation index and kind.
#[derive(Debug, Clone, Copy)]
struct Picture {
    index: u64,
    kind: UnitKind,
}

/// `frames` pictures in decode order, a keyframe every `gop`, two
/// B-frames between references with x264's pyramid (the first B of each
/// pair a reference): I0 P3 B2 b1 P6 B5 b4 ...
fn stream(frames: u64, gop: u64, idr: bool) -> Vec<Picture> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < frames {
        let end = (start + gop).min(frames);
        out.push(Picture {
            index: start,
            kind: UnitKind::Key { idr },
        });
        let mut j = start;
        while j + 1 < end {
            let p = (j + 3).min(end - 1);
            out.push(Picture {
                index: p,
                kind: UnitKind::Reference,
            });
            if p >= j + 3 {
                out.push(Picture {
                    index: j + 2,
                    kind: UnitKind::Reference,
                });
            }
            for b in j + 1..p.min(j + 2) {
                out.push(Picture {
                    index: b,
                    kind: UnitKind::NonReference,
                });
            }
            j = p;
        }
        start = end;
    }
    out
}

fn pts(p: &Picture) -> u64 {
    p.index * FRAME_NS
}

/// The planner's output for `pictures` (decode order).
fn plan(
    pictures: &[Picture],
    mode: DecodeMode,
    sampler: FrameSampler,
) -> (Vec<Picture>, PlanCounts) {
    run(GopPlanner::new(mode, sampler), pictures)
}

/// What `planner` sends of `pictures` (decode order), to the end.
fn run(mut planner: GopPlanner<Picture>, pictures: &[Picture]) -> (Vec<Picture>, PlanCounts) {
    let mut sent = Vec::new();
    for p in pictures {
        sent.extend(planner.push(Unit {
            payload: *p,
            pts_ns: Some(pts(p)),
            kind: p.kind,
        }));
    }
    sent.extend(planner.finish());
    (sent, planner.counts())
}

/// What a sampler keeps of `pictures` in presentation order.
fn sampled(pictures: &[Picture], mut sampler: FrameSampler) -> Vec<u64> {
    let mut times: Vec<u64> = pictures.iter().map(pts).collect();
    times.sort_unstable();
    times.into_iter().filter(|&t| sampler.accept(t)).collect()
}

/// Every sent picture's possible references (the reference pictures before
/// it in decode order, back to its GOP's keyframe; for an open GOP the
/// previous GOP's too) were sent before it.
fn assert_decodable(all: &[Picture], sent: &[Picture]) {
    let sent_idx: Vec<u64> = sent.iter().map(|p| p.index).collect();
    let position = |i: u64| all.iter().position(|p| p.index == i).unwrap();
    for p in sent {
        let at = position(p.index);
        let mut k = at;
        loop {
            let q = all[k];
            if k != at && q.kind != UnitKind::NonReference {
                assert!(
                    sent_idx.contains(&q.index),
                    "picture {} sent without its possible reference {}",
                    p.index,
                    q.index
                );
            }
            match q.kind {
                UnitKind::Key { idr: true } => break,
                _ if k == 0 => break,
                _ => k -= 1,
            }
        }
    }
}

#[test]
fn exact_sends_the_sampled_pictures_and_what_they_reference_only() {
    // 10 s at 25 fps, a keyframe every second, sampled at 2 fps.
    let all = stream(250, 25, true);
    let (sent, counts) = plan(&all, DecodeMode::Exact, FrameSampler::new(2.0));
    assert_decodable(&all, &sent);
    let want = sampled(&all, FrameSampler::new(2.0));
    // Downstream, the sampler sees only what was decoded, and keeps the same.
    assert_eq!(sampled(&sent, FrameSampler::new(2.0)), want);
    assert_eq!(want.len(), 20);
    assert_eq!(counts.decoded + counts.skipped, 250);
    assert_eq!(counts.decoded, sent.len() as u64);
    // Per GOP: frames 0 and 13 sampled; decoded are b13 and the references
    // before it in decode order (I0 P3 B2 P6 B5 P9 B8 P12 B11 P15 B14):
    // 12 of 25.
    assert_eq!(counts.decoded, 120, "{sent:?}");
}

#[test]
fn gops_without_a_sampled_picture_are_not_decoded() {
    // A step of 4 s over 1 s GOPs: three GOPs of four are skipped whole,
    // and the fourth decodes its keyframe only.
    let all = stream(500, 25, true);
    let (sent, counts) = plan(&all, DecodeMode::Exact, FrameSampler::new(0.25));
    assert_decodable(&all, &sent);
    assert_eq!(
        sent.iter().map(pts).collect::<Vec<_>>(),
        sampled(&all, FrameSampler::new(0.25))
    );
    assert_eq!(counts.decoded, 5);
}

#[test]
fn an_open_gop_keeps_every_reference_picture() {
    let all = stream(100, 25, false);
    let (sent, _) = plan(&all, DecodeMode::Exact, FrameSampler::new(0.25));
    assert_decodable(&all, &sent);
    assert_eq!(
        sampled(&sent, FrameSampler::new(0.25)),
        sampled(&all, FrameSampler::new(0.25))
    );
    let references = all.iter().filter(|p| p.kind != UnitKind::NonReference);
    // Only the last GOP (closed by the end of the stream) sheds references.
    assert!(
        references
            .filter(|p| p.index < 75)
            .all(|r| sent.iter().any(|s| s.index == r.index))
    );
}

#[test]
fn fast_never_decodes_a_non_reference_picture() {
    let all = stream(250, 25, true);
    let (sent, counts) = plan(&all, DecodeMode::Fast, FrameSampler::new(2.0));
    assert_decodable(&all, &sent);
    assert!(sent.iter().all(|p| p.kind != UnitKind::NonReference));
    let references: Vec<Picture> = all
        .iter()
        .copied()
        .filter(|p| p.kind != UnitKind::NonReference)
        .collect();
    assert_eq!(
        sampled(&sent, FrameSampler::new(2.0)),
        sampled(&references, FrameSampler::new(2.0))
    );
    // Per GOP: I0 and B14 sampled, with the references before B14: 11 of
    // 25 (dropping the non-reference pictures alone decodes 17).
    assert_eq!(counts.decoded, 110, "{counts:?}");
}

#[test]
fn keyframes_decodes_the_sampled_keyframes_only() {
    let all = stream(500, 25, true);
    let (sent, counts) = plan(&all, DecodeMode::Keyframes, FrameSampler::new(0.5));
    assert!(sent.iter().all(|p| matches!(p.kind, UnitKind::Key { .. })));
    assert_eq!(
        sent.iter().map(pts).collect::<Vec<_>>(),
        (0..10).map(|k| k * 2 * 25 * FRAME_NS).collect::<Vec<_>>()
    );
    assert_eq!(
        counts,
        PlanCounts {
            decoded: 10,
            skipped: 490
        }
    );
}

#[test]
fn a_resumed_sampler_plans_what_an_uninterrupted_run_samples() {
    let all = stream(250, 25, true);
    let full = sampled(&all, FrameSampler::new(2.0));
    let cut = full[7];
    let (sent, _) = plan(
        &all,
        DecodeMode::Exact,
        FrameSampler::resume_after(2.0, cut),
    );
    assert_decodable(&all, &sent);
    let after: Vec<Picture> = sent.into_iter().filter(|p| pts(p) > cut).collect();
    assert_eq!(
        sampled(&after, FrameSampler::resume_after(2.0, cut)),
        full[8..]
    );
}

#[test]
fn a_gop_too_long_to_hold_is_decoded_whole_and_sampling_stays_exact() {
    let frames = MAX_HELD_UNITS as u64 * 2;
    let all = stream(frames, frames, true);
    let (sent, counts) = plan(&all, DecodeMode::Exact, FrameSampler::new(2.0));
    assert_decodable(&all, &sent);
    assert_eq!(
        sampled(&sent, FrameSampler::new(2.0)),
        sampled(&all, FrameSampler::new(2.0))
    );
    // Held units are released at the limit, and what follows in that GOP
    // is sent as it comes.
    assert_eq!(counts.decoded, frames);
}

#[test]
fn pictures_without_a_time_or_out_of_order_gops_are_decoded_whole() {
    let all = stream(50, 25, true);
    let mut planner = GopPlanner::new(DecodeMode::Exact, FrameSampler::new(2.0));
    let mut sent = Vec::new();
    for (n, p) in all.iter().enumerate() {
        sent.extend(planner.push(Unit {
            payload: p.index,
            pts_ns: (n != 5).then(|| pts(p)),
            kind: p.kind,
        }));
    }
    // The first GOP has a unit without a time: all 25 go.
    assert_eq!(sent.len(), 25);
    // A GOP whose times lie before those already decided: all of it goes.
    for (i, kind) in [
        (10u64, UnitKind::Key { idr: true }),
        (11, UnitKind::NonReference),
    ] {
        sent.extend(planner.push(Unit {
            payload: i,
            pts_ns: Some(i * FRAME_NS),
            kind,
        }));
    }
    sent.extend(planner.finish());
    assert!(sent.ends_with(&[10, 11]), "{sent:?}");
}

#[test]
fn a_flush_drops_what_is_held_and_units_before_a_keyframe_pass() {
    let all = stream(50, 25, true);
    let mut planner = GopPlanner::new(DecodeMode::Exact, FrameSampler::new(2.0));
    for p in &all[..10] {
        assert!(
            planner
                .push(Unit {
                    payload: p.index,
                    pts_ns: Some(pts(p)),
                    kind: p.kind
                })
                .is_empty()
        );
    }
    planner.flush();
    // After a flush and before the next keyframe, units go as they come.
    let p = all[12];
    assert_eq!(
        planner.push(Unit {
            payload: p.index,
            pts_ns: Some(pts(&p)),
            kind: p.kind
        }),
        vec![p.index]
    );
    assert_eq!(planner.release(), Vec::<u64>::new());
}

#[test]
fn the_first_gops_can_be_sent_whole() {
    let all = stream(100, 25, true);
    let planner = GopPlanner::new(DecodeMode::Exact, FrameSampler::new(2.0)).with_whole_gops(1);
    let (sent, counts) = run(planner, &all);
    assert_decodable(&all, &sent);
    assert_eq!(
        sampled(&sent, FrameSampler::new(2.0)),
        sampled(&all, FrameSampler::new(2.0))
    );
    // The first GOP whole, then 12 of each following 25.
    assert_eq!(counts.decoded, 25 + 3 * 12);
}
