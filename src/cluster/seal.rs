//! Gossip packets signed with the cluster secret.
//!
//! foca has no authentication of its own, so every packet it hands us is
//! wrapped as `[TAG][HMAC-SHA256(secret, TAG ‖ body)][body]` and every
//! packet received is checked before foca sees a byte of it: a node
//! without the secret cannot join, forge a member's state or make us
//! decode anything.
//!
//! The first byte keeps the port shareable with QUIC later: a QUIC packet
//! always has the fixed bit (0x40) set in its first byte (we do not
//! negotiate greasing it), and [`TAG`] has it clear.
//!
//! What the signature does not stop: a packet recorded on the network and
//! sent again. SWIM's incarnation numbers make a replayed "alive" or
//! "suspect" about a member stale as soon as that member speaks again, so a
//! replay can delay a verdict by a probe period, not admit anyone.

use ring::hmac;
use subtle::ConstantTimeEq;

/// First byte of every gossip packet.
pub const TAG: u8 = 0x1c;
const MAC_LEN: usize = 32;
/// Bytes a sealed packet adds to foca's own.
pub const OVERHEAD: usize = 1 + MAC_LEN;

/// Why a received packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not a gossip packet at all (another protocol, or noise).
    NotGossip,
    /// Too short to hold the signature.
    Truncated,
    /// Signed with another secret, or altered on the way.
    BadSignature,
}

impl Rejected {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Rejected::NotGossip => "not_gossip",
            Rejected::Truncated => "truncated",
            Rejected::BadSignature => "bad_signature",
        }
    }
}

/// Signs and checks packets with one cluster secret.
pub struct Sealer {
    key: hmac::Key,
}

impl Sealer {
    pub fn new(secret: &[u8]) -> Sealer {
        Sealer {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// `body` as a signed packet, written into `out` (cleared first).
    pub fn seal(&self, body: &[u8], out: &mut Vec<u8>) {
        let tag = self.sign(body);
        out.clear();
        out.reserve(OVERHEAD + body.len());
        out.push(TAG);
        out.extend_from_slice(tag.as_ref());
        out.extend_from_slice(body);
    }

    /// The body of a packet signed with this secret.
    pub fn open<'a>(&self, packet: &'a [u8]) -> Result<&'a [u8], Rejected> {
        match packet.first() {
            Some(&TAG) => {}
            _ => return Err(Rejected::NotGossip),
        }
        if packet.len() < OVERHEAD {
            return Err(Rejected::Truncated);
        }
        let (mac, body) = packet[1..].split_at(MAC_LEN);
        if bool::from(self.sign(body).as_ref().ct_eq(mac)) {
            Ok(body)
        } else {
            Err(Rejected::BadSignature)
        }
    }

    fn sign(&self, body: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&[TAG]);
        ctx.update(body);
        ctx.sign()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_packet_opens_with_the_same_secret_only() {
        let ours = Sealer::new(b"correct horse battery staple");
        let theirs = Sealer::new(b"correct horse battery stable");
        let mut packet = Vec::new();
        ours.seal(b"hello cluster", &mut packet);
        assert_eq!(packet.len(), OVERHEAD + 13);
        assert_eq!(packet[0], TAG);
        assert_eq!(ours.open(&packet), Ok(&b"hello cluster"[..]));
        assert_eq!(theirs.open(&packet), Err(Rejected::BadSignature));
    }

    #[test]
    fn any_changed_byte_is_refused() {
        let sealer = Sealer::new(b"0123456789abcdef");
        let mut packet = Vec::new();
        sealer.seal(b"member list", &mut packet);
        for i in 1..packet.len() {
            let mut bad = packet.clone();
            bad[i] ^= 0x01;
            assert_eq!(sealer.open(&bad), Err(Rejected::BadSignature), "byte {i}");
        }
        // The tag byte itself says what the packet is.
        let mut other = packet.clone();
        other[0] = 0x40;
        assert_eq!(sealer.open(&other), Err(Rejected::NotGossip));
    }

    #[test]
    fn short_and_empty_packets_are_refused() {
        let sealer = Sealer::new(b"0123456789abcdef");
        assert_eq!(sealer.open(&[]), Err(Rejected::NotGossip));
        assert_eq!(sealer.open(&[TAG]), Err(Rejected::Truncated));
        assert_eq!(sealer.open(&[TAG; OVERHEAD - 1]), Err(Rejected::Truncated));
        // Exactly the overhead: an empty body, which must still be signed.
        assert_eq!(sealer.open(&[TAG; OVERHEAD]), Err(Rejected::BadSignature));
        let mut packet = Vec::new();
        sealer.seal(b"", &mut packet);
        assert_eq!(sealer.open(&packet), Ok(&b""[..]));
    }

    #[test]
    fn the_tag_never_looks_like_quic() {
        assert_eq!(TAG & 0x40, 0);
    }
}
