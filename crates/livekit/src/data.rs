//! Our messages inside LiveKit data packets: user packets on topic `duplex`,
//! their payload the same JSON text a WebSocket client sends and receives.

use livekit_protocol as proto;
use prost::Message;

/// The topic of every packet we send and the only one we read.
pub const TOPIC: &str = "duplex";

/// A reliable user packet carrying `text`.
pub fn encode(text: &str) -> Vec<u8> {
    #[allow(deprecated)] // `kind` is deprecated but older servers still read it.
    let packet = proto::DataPacket {
        kind: proto::data_packet::Kind::Reliable as i32,
        value: Some(proto::data_packet::Value::User(proto::UserPacket {
            payload: text.as_bytes().to_vec(),
            topic: Some(TOPIC.into()),
            ..Default::default()
        })),
        ..Default::default()
    };
    packet.encode_to_vec()
}

/// The text of a user packet on our topic; anything else is `None`.
pub fn decode(bytes: &[u8]) -> Option<String> {
    let packet = proto::DataPacket::decode(bytes).ok()?;
    match packet.value? {
        proto::data_packet::Value::User(user) if user.topic.as_deref() == Some(TOPIC) => {
            String::from_utf8(user.payload).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_other_topics_are_ignored() {
        let text = r#"{"type":"user_text","text":"Hi"}"#;
        assert_eq!(decode(&encode(text)).as_deref(), Some(text));
        let other = proto::DataPacket {
            value: Some(proto::data_packet::Value::User(proto::UserPacket {
                payload: b"x".to_vec(),
                topic: Some("chat".into()),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(decode(&other.encode_to_vec()), None);
        assert_eq!(decode(b"\xff\xff not protobuf"), None);
    }
}
