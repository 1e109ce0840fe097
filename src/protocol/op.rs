//! Opcodes (contract §2). Plain `u8` constants rather than an enum: the
//! server must answer unknown opcodes with an `invalid` packet instead of
//! failing to decode, so the decoder keeps whatever number arrived.

/// Server → client, first packet on every connection.
pub const HELLO: u8 = 0;
/// Client → server, the first packet a client must send.
pub const IDENTIFY: u8 = 1;
/// Server → client, identify accepted.
pub const READY: u8 = 2;
/// Server → client, the last packet was rejected; the connection stays open.
pub const INVALID: u8 = 3;
/// Both ways, with `t` naming the event.
pub const DISPATCH: u8 = 4;
/// Client → server.
pub const HEARTBEAT: u8 = 5;
/// Server → client.
pub const HEARTBEAT_ACK: u8 = 6;
/// Server → client, then close; the client should reconnect.
pub const GOODBYE: u8 = 7;
/// Server → client, then close.
pub const ERROR: u8 = 8;

/// The lowercase name of a known opcode, for logs.
pub fn name(op: u8) -> Option<&'static str> {
    Some(match op {
        HELLO => "hello",
        IDENTIFY => "identify",
        READY => "ready",
        INVALID => "invalid",
        DISPATCH => "dispatch",
        HEARTBEAT => "heartbeat",
        HEARTBEAT_ACK => "heartbeat_ack",
        GOODBYE => "goodbye",
        ERROR => "error",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_opcodes_are_named_and_others_are_not() {
        assert_eq!(super::name(super::HEARTBEAT_ACK), Some("heartbeat_ack"));
        assert_eq!((0..=8).filter_map(super::name).count(), 9);
        assert_eq!(super::name(9), None);
        assert_eq!(super::name(255), None);
    }
}
