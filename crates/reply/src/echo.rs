//! The echo responder: answers with what it heard, word by word. No model;
//! it shows the whole loop working (and measures everything but the model).

use tokio::sync::mpsc;

use crate::{PIECE_QUEUE, ReplyError, Request, Responder};

#[derive(Debug, Default, Clone)]
pub struct Echo;

impl Responder for Echo {
    fn respond(&self, request: Request) -> mpsc::Receiver<Result<String, ReplyError>> {
        let (tx, rx) = mpsc::channel(PIECE_QUEUE);
        tokio::spawn(async move {
            let reply = format!("You said: {}", request.user.trim());
            for word in reply.split_inclusive(' ') {
                tokio::select! {
                    biased;
                    _ = request.cancel.cancelled() => return,
                    sent = tx.send(Ok(word.to_string())) => if sent.is_err() { return },
                }
            }
        });
        rx
    }

    fn describe(&self) -> String {
        "echo".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echoes_in_pieces_and_stops_when_cancelled() {
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut rx = Echo.respond(Request { history: vec![], user: " two words ".into(), cancel: cancel.clone() });
        let mut pieces = Vec::new();
        while let Some(p) = rx.recv().await {
            pieces.push(p.unwrap());
        }
        assert_eq!(pieces.concat(), "You said: two words");
        assert!(pieces.len() > 1, "streamed, not in one piece");
        cancel.cancel();
        let mut rx = Echo.respond(Request { history: vec![], user: "x".into(), cancel });
        assert_eq!(rx.recv().await, None, "nothing after the cancel");
    }
}
