//! Rendezvous (highest-random-weight) hashing for SEND's `key`.
//!
//! Every matching client gets a score from `(key, app, client)`; the highest
//! wins. The same key then reaches the same client for as long as that
//! client matches, and when the set changes only the keys whose winner left
//! (or whom a newcomer outscores) move — no ring, no state.
//!
//! The score must agree between shards (each scores its own clients and the
//! best of the bests wins), so it is a fixed function of the bytes: FNV-1a
//! over length-prefixed fields, finished with MurmurHash3's 64-bit mixer.
//! No `RandomState`, and nothing that a Rust release may change (std's
//! `DefaultHasher` algorithm is unspecified). FNV-1a alone leaves the last
//! bytes poorly spread across the high bits; the mixer fixes that, which is
//! what matters when only the maximum of the scores is used.

/// The score of `client_id` of `app_id` for `key`; the highest score wins.
/// Ties (2^-64 per pair) should be broken by `(app_id, client_id)`.
pub fn rendezvous_score(key: &str, app_id: &str, client_id: &str) -> u64 {
    let mut h = FNV_OFFSET;
    for field in [key, app_id, client_id] {
        // The length prefix keeps ("ab", "c") and ("a", "bc") apart.
        h = fnv1a(h, &(field.len() as u64).to_le_bytes());
        h = fnv1a(h, field.as_bytes());
    }
    fmix64(h)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// MurmurHash3's finalizer: every input bit affects every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn winner<'a>(key: &str, clients: &[&'a str]) -> &'a str {
        clients
            .iter()
            .copied()
            .max_by_key(|c| (rendezvous_score(key, "app", c), *c))
            .unwrap_or_default()
    }

    #[test]
    fn fixed_values() {
        // Pinned: a change here reroutes every keyed SEND across an upgrade
        // and, worse, between shards of mixed builds.
        // (Values computed independently of this code.)
        assert_eq!(
            rendezvous_score("key", "app", "client"),
            0x8a03_15f0_7642_f351
        );
        assert_eq!(rendezvous_score("신경", "app", "c"), 0xd0ce_ba2d_ac77_8899);
        assert_eq!(
            rendezvous_score("", "", ""),
            fmix64(fnv1a(FNV_OFFSET, &[0; 24]))
        );
        assert_eq!(
            rendezvous_score("k", "a", "c"),
            rendezvous_score("k", "a", "c")
        );
        assert_ne!(
            rendezvous_score("ab", "c", "x"),
            rendezvous_score("a", "bc", "x")
        );
        assert_ne!(
            rendezvous_score("k", "a", "c1"),
            rendezvous_score("k", "a", "c2")
        );
        assert_ne!(
            rendezvous_score("k", "a1", "c"),
            rendezvous_score("k", "a2", "c")
        );
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn spreads_keys_evenly() {
        let clients: Vec<String> = (0..10).map(|i| format!("client-{i}")).collect();
        let names: Vec<&str> = clients.iter().map(String::as_str).collect();
        let mut counts = [0u32; 10];
        for k in 0..20_000 {
            let w = winner(&format!("key-{k}"), &names);
            let i = names.iter().position(|n| *n == w).unwrap_or_default();
            counts[i] += 1;
        }
        for c in counts {
            assert!((1_700..=2_300).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn only_the_leavers_keys_move() {
        let all = ["a", "b", "c", "d", "e"];
        let fewer = ["a", "b", "d", "e"];
        for k in 0..2_000 {
            let key = format!("{k}");
            let before = winner(&key, &all);
            let after = winner(&key, &fewer);
            if before != "c" {
                assert_eq!(before, after);
            }
        }
    }
}
