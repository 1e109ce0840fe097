//! The exact wire text of every error the server sends, in one place.
//!
//! These strings travel in the `error` field of invalid (op 3) and error
//! (op 8) packets and in the `reason` of goodbye (op 7). Clients match on
//! them, so they are part of the contract: change one only together with
//! the contract.

/// Error (op 8): any opcode other than identify before identifying.
pub const NOT_IDENTIFIED: &str = "sent payload with non-identify opcode without identifying first";
/// Error (op 8): `client_id` missing, empty, not a string or with whitespace.
pub const INVALID_CLIENT_ID: &str = "invalid client_id";
/// Error (op 8): `application_id` missing, empty, not a string or with whitespace.
pub const INVALID_APPLICATION_ID: &str = "invalid application_id";
/// Error (op 8): identify on a connection that already identified.
pub const ALREADY_IDENTIFIED: &str = "already identified";
/// Error (op 8): a restricted client on an `etf` connection.
pub const RESTRICTED_ETF: &str = "restricted clients may not use etf";
/// Error (op 8): identify with invalid `metadata`; `extra_info` holds the
/// message for each rejected key.
pub const INITIAL_METADATA_INVALID: &str = "initial metadata: invalid";
/// Invalid (op 3): an `UPDATE_METADATA` that was rejected as a whole;
/// `extra_info` holds the message for each rejected key.
pub const INVALID_METADATA: &str = "invalid metadata";
/// Invalid (op 3): a metadata update past the configured size limit.
pub const METADATA_TOO_LARGE: &str = "metadata too large";
/// Invalid (op 3): a non-droppable query matched nobody; `extra_info` is the
/// packet as received.
pub const NO_ROUTE: &str = "no_route";
/// Invalid (op 3): a dispatch with an unknown `t`, or whose `d` lacks what
/// that `t` needs.
pub const INVALID_DISPATCH_PAYLOAD: &str = "invalid dispatch payload";
/// Invalid (op 3): an opcode a client may not send (unknown, or server-only).
pub const INVALID_OP: &str = "invalid op";
/// Invalid (op 3): a frame that does not decode in the connection's encoding;
/// `extra_info` holds the decoder's message.
pub const CANNOT_DECODE: &str = "cannot decode payload";
/// Error (op 8): no heartbeat within 1.5 × `heartbeat_interval`.
pub const HEARTBEAT_TOO_LONG: &str = "heartbeat took too long";
/// Error (op 8): the client reads too slowly and its outbound buffer is full.
pub const SLOW_CONSUMER: &str = "slow consumer";
/// Error (op 8): a frame past the configured size limit.
pub const FRAME_TOO_LARGE: &str = "frame too large";
/// Goodbye (op 7) reason when the server shuts down.
pub const SHUTDOWN: &str = "shutdown";
/// Goodbye (op 7) reason when a node of a cluster holding more than its
/// share of clients sends some away, to reconnect elsewhere.
pub const LOAD_BALANCING: &str = "load balancing";
/// Invalid (op 3) sent instead of a packet the server could not encode for
/// this connection (see `protocol::unencodable`).
pub const ENCODE_FAILED: &str = "internal error: a packet for this connection could not be encoded";

/// Error (op 8): the (`application_id`, `client_id`) pair is already connected.
pub fn already_registered(client_id: &str, application_id: &str) -> String {
    format!("{client_id}: already registered for app {application_id}")
}

/// Invalid (op 3): a dispatch type the client may not send (restricted
/// clients may only send `UPDATE_METADATA`).
pub fn restricted_dispatch(t: &str) -> String {
    format!("invalid dispatch type {t} (are you restricted?)")
}

/// Invalid (op 3): a malformed query; `detail` names the problem.
pub fn invalid_query(detail: &str) -> String {
    format!("invalid query: {detail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatted_texts_match_the_contract() {
        assert_eq!(
            already_registered("c1", "app"),
            "c1: already registered for app app"
        );
        assert_eq!(
            restricted_dispatch("SEND"),
            "invalid dispatch type SEND (are you restricted?)"
        );
        assert_eq!(
            invalid_query("unknown op $foo"),
            "invalid query: unknown op $foo"
        );
    }
}
