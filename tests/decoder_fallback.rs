//! A decoder that fails (as a broken hardware decoder does) is skipped on
//! the stream's next attempt, which plugs the next decoder by rank: a fail
//! point breaks `vp8dec` (primary rank), and the clip is read through
//! `avdec_vp8` (marginal) with every frame stored once.
#![cfg(feature = "failpoints")]

mod common;

#[test]
fn a_failing_decoder_falls_back_to_the_next_by_rank_without_losing_frames() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.webm");
    // 4 s at 25 fps: frames sampled at 0, 0.5, ... 3.5 s.
    common::gst(&format!(
        "videotestsrc pattern=smpte num-buffers=100 ! video/x-raw,width=160,height=120,framerate=25/1 \
         ! videoconvert ! vp8enc keyframe-max-dist=25 deadline=1 ! webmmux ! filesink location={}",
        clip.display()
    ));
    let port = common::free_port();
    let config = common::file_stream_config(
        dir.path(),
        port,
        &clip,
        "retry_initial_secs = 0.2\nretry_max_secs = 0.4",
    );
    let mut daemon = common::daemon(&config, dir.path())
        .env("FAILPOINTS", "ingest::decoder_fails=return(vp8dec)")
        .spawn()
        .unwrap();
    let (front, errors) = common::wait_until_finished(port);
    common::terminate(&mut daemon);

    // The next attempt plugged the next decoder by rank and read the clip.
    let decoder = front["decoder"].as_str().unwrap_or_default();
    assert!(decoder.starts_with("avdec_vp8"), "{front}");
    // The failure it retried after names the decoder and what became of it.
    let error = front["last_error"].as_str().unwrap_or_default();
    for e in errors.iter().map(String::as_str).chain([error]) {
        assert!(
            e.contains("vp8dec0: ")
                && e.ends_with("; decoder vp8dec skipped from the next attempt on"),
            "{e}"
        );
    }
    common::assert_file_finished_with(dir.path(), &clip, 8);
}
