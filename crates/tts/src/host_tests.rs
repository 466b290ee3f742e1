//! Tests of the engine host (`host.rs`).

use super::*;
use crate::mock::{MockConfig, MockEngine};

fn host(cfg: MockConfig) -> EngineHost {
    EngineHost::start("mock", 1, move || Ok(Box::new(MockEngine::new(cfg.clone())?) as Box<dyn Engine>))
        .expect("mock starts")
}

async fn collect(job: &mut Job) -> (usize, JobEvent) {
    let mut frames = 0;
    loop {
        match job.next().await.expect("lane alive") {
            JobEvent::Frame(f) => {
                assert_eq!(f.len(), duplex_audio::FRAME_BYTES);
                frames += 1;
            }
            JobEvent::Speaking { .. } => {}
            end => return (frames, end),
        }
    }
}

#[tokio::test]
async fn streams_frames_then_one_end() {
    let h = host(MockConfig::default());
    let mut job = h.start_job(SynthesisParams::default()).await.unwrap();
    job.handle().push_text("Hi there.".into()).await.unwrap();
    job.handle().finish().await.unwrap();
    let first = job.next().await;
    assert_eq!(first, Some(JobEvent::Speaking { text_offset: 0 }), "the text offset comes before the audio");
    let (frames, end) = collect(&mut job).await;
    // 7 letters + space/2 + stop*4 = 11.5 chars * 75 ms = 862.5 ms -> 43 frames + a partial.
    assert_eq!(frames, 43);
    assert!(matches!(end, JobEvent::End { last: Some(_), outcome: Outcome::Completed }));
}

#[tokio::test]
async fn empty_text_ends_empty() {
    let h = host(MockConfig::default());
    let mut job = h.start_job(SynthesisParams::default()).await.unwrap();
    job.handle().finish().await.unwrap();
    assert_eq!(collect(&mut job).await, (0, JobEvent::End { last: None, outcome: Outcome::Empty }));
}

#[tokio::test]
async fn bad_params_fail_the_job_not_the_lane() {
    let h = host(MockConfig::default());
    let mut bad = h.start_job(SynthesisParams { speed: -1.0, voice: None }).await.unwrap();
    assert!(matches!(collect(&mut bad).await.1, JobEvent::End { outcome: Outcome::Failed(_), .. }));
    let mut good = h.start_job(SynthesisParams::default()).await.unwrap();
    good.handle().push_text("ok".into()).await.unwrap();
    good.handle().finish().await.unwrap();
    assert!(matches!(collect(&mut good).await.1, JobEvent::End { outcome: Outcome::Completed, .. }));
}

#[tokio::test]
async fn paused_job_makes_no_progress_and_cancel_frees_lane() {
    let h = host(MockConfig::default());
    let mut job = h.start_job(SynthesisParams::default()).await.unwrap();
    job.handle().set_paused(true);
    job.handle().push_text("a long sentence to speak".into()).await.unwrap();
    job.handle().finish().await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(100), job.next()).await;
    assert!(waited.is_err(), "no frame while paused");
    job.handle().set_paused(false);
    assert_eq!(job.next().await, Some(JobEvent::Speaking { text_offset: 0 }));
    assert!(matches!(job.next().await, Some(JobEvent::Frame(_))));
    job.handle().cancel();
    drop(job);
    for _ in 0..100 {
        if h.active_jobs() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("cancelled job still active");
}
