//! A file the daemon can read only part of (a fail point makes its data
//! corrupt from 2 s on): retried while attempts get further, then finished
//! at its last good frame instead of being decoded again forever.
#![cfg(feature = "failpoints")]

mod common;

#[test]
fn a_file_with_a_corrupt_tail_is_finished_at_its_last_good_frame() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    common::make_clip(&clip, 100, 25, 160, 120, "smpte");
    let port = common::free_port();
    let config = common::file_stream_config(
        dir.path(),
        port,
        &clip,
        "retry_initial_secs = 0.2\nretry_max_secs = 0.4\nmax_file_attempts = 3",
    );
    let mut daemon = common::daemon(&config, dir.path())
        .env("FAILPOINTS", "ingest::corrupt_from_pts=return(2000000000)")
        .spawn()
        .unwrap();
    let (front, _) = common::wait_until_finished(port);
    common::terminate(&mut daemon);
    let error = front["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("corrupt data") && error.contains("gave up after 3 attempts"),
        "{front}"
    );
    // 0, 0.5, 1.0 and 1.5 s were readable; the checkpoint says done.
    common::assert_file_finished_with(dir.path(), &clip, 4);
}
