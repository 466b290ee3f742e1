//! A session's connection to its worker: down, opening (dialled inside the
//! session loop so the client keeps being read), or up with a stream.

use std::pin::Pin;

use duplex_proto::tts::{AudioFrame, TextChunk};

use crate::worker::{WorkerError, WorkerStream};

/// The session's connection to its worker.
pub(crate) enum Link {
    Down,
    /// StartSession and Synthesize in flight (polled by the session loop, so
    /// the client is read meanwhile); text arriving now waits in `backlog`.
    Opening {
        open: Pin<Box<dyn Future<Output = Result<WorkerStream, WorkerError>> + Send>>,
        backlog: Vec<TextChunk>,
    },
    Up(WorkerStream),
}

pub(crate) enum LinkEvent {
    Opened(Result<WorkerStream, WorkerError>),
    Frame(Result<Option<AudioFrame>, tonic::Status>),
}

/// The next thing the link has to say; pending while it has nothing (or
/// while `read_frames` is false, which throttles the worker).
pub(crate) async fn link_event(link: &mut Link, read_frames: bool) -> LinkEvent {
    match link {
        Link::Opening { open, .. } => LinkEvent::Opened(open.as_mut().await),
        Link::Up(stream) if read_frames => LinkEvent::Frame(stream.frames.message().await),
        _ => std::future::pending().await,
    }
}
