//! A duplicate (application, client id) refused across the cluster, the
//! table part (pure): each name has a home node (rendezvous hash of
//! [`key`] over the live members, `ClusterView::home`), and the home keeps
//! which other node holds it. The home's own clients are in its local
//! name registry (`shard::names`), which is checked beside this table.
//! The runtime (`crate::node::claims`) asks homes and answers for them.

use std::collections::HashMap;
use std::net::SocketAddr;

/// (application id, client id).
pub type Name = (Box<str>, Box<str>);

/// The bytes a name is homed by: its own space (`n`), then the
/// application's length, so that no two names share their bytes.
pub fn key(app: &str, client: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + app.len() + client.len());
    key.push(b'n');
    key.extend_from_slice(&(app.len() as u32).to_le_bytes());
    key.extend_from_slice(app.as_bytes());
    key.extend_from_slice(client.as_bytes());
    key
}

/// Who holds a name: a node (by gossip address and run) and the
/// connection there (shard and connection id), so that a release from an
/// earlier connection of that node cannot drop a newer one's claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Holder {
    pub addr: SocketAddr,
    pub boot: u64,
    pub shard: u32,
    pub conn: u64,
}

impl Holder {
    fn same_node(&self, other: &Holder) -> bool {
        self.addr == other.addr
    }
}

/// The names homed on this node (one shard's part) that other nodes hold.
#[derive(Debug, Default)]
pub struct ClaimTable {
    held: HashMap<Name, Holder>,
}

impl ClaimTable {
    /// Records `holder`'s claim of `name`, unless another node holds it:
    /// then that node's entry is the error. A node that holds the name
    /// already replaces its entry (its own registry keeps its names unique,
    /// so its newer claim is the live one), unless the claim comes from an
    /// earlier run of it. `stale`: an entry the caller found is no longer
    /// held (its node said so, or left): replaced if it is still the entry.
    pub fn claim(
        &mut self,
        name: Name,
        holder: Holder,
        stale: Option<&Holder>,
    ) -> Result<(), Holder> {
        match self.held.get(&name) {
            Some(now) if Some(now) == stale => {}
            Some(now) if now.same_node(&holder) && holder.boot >= now.boot => {}
            Some(now) => return Err(*now),
            None => {}
        }
        self.held.insert(name, holder);
        Ok(())
    }

    /// Forgets `name` if `holder` (exactly) still holds it.
    pub fn release(&mut self, name: &Name, holder: &Holder) {
        if self.held.get(name) == Some(holder) {
            self.held.remove(name);
        }
    }

    pub fn holder(&self, name: &Name) -> Option<&Holder> {
        self.held.get(name)
    }

    /// Keeps the entries `keep` says (those of live nodes, homed here).
    pub fn retain(&mut self, mut keep: impl FnMut(&Name, &Holder) -> bool) {
        self.held.retain(|name, holder| keep(name, holder));
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(app: &str, client: &str) -> Name {
        (app.into(), client.into())
    }

    fn holder(port: u16, boot: u64, conn: u64) -> Holder {
        Holder {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            boot,
            shard: 0,
            conn,
        }
    }

    #[test]
    fn another_node_is_refused_and_told_who_holds_it() {
        let mut t = ClaimTable::default();
        let (a, b) = (holder(1, 1, 7), holder(2, 1, 9));
        assert_eq!(t.claim(name("app", "x"), a, None), Ok(()));
        assert_eq!(t.claim(name("app", "x"), b, None), Err(a));
        // Another application, or another id: another name.
        assert_eq!(t.claim(name("other", "x"), b, None), Ok(()));
        assert_eq!(t.claim(name("app", "y"), b, None), Ok(()));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn the_holding_node_claims_again_and_only_its_latest_release_frees() {
        let mut t = ClaimTable::default();
        let (first, again) = (holder(1, 1, 7), holder(1, 1, 8));
        t.claim(name("app", "x"), first, None).unwrap();
        // Its client reconnected on it before the release arrived.
        assert_eq!(t.claim(name("app", "x"), again, None), Ok(()));
        t.release(&name("app", "x"), &first);
        assert_eq!(t.holder(&name("app", "x")), Some(&again));
        t.release(&name("app", "x"), &again);
        assert!(t.is_empty());
    }

    #[test]
    fn an_earlier_run_cannot_take_a_name_back_from_a_later_one() {
        let mut t = ClaimTable::default();
        let (old, new) = (holder(1, 1, 7), holder(1, 2, 1));
        t.claim(name("app", "x"), new, None).unwrap();
        assert_eq!(t.claim(name("app", "x"), old, None), Err(new));
    }

    #[test]
    fn a_stale_entry_is_replaced_only_while_it_is_the_entry() {
        let mut t = ClaimTable::default();
        let (a, b, c) = (holder(1, 1, 7), holder(2, 1, 9), holder(3, 1, 4));
        t.claim(name("app", "x"), a, None).unwrap();
        assert_eq!(t.claim(name("app", "x"), b, Some(&a)), Ok(()));
        // c checked a too, but b has it now.
        assert_eq!(t.claim(name("app", "x"), c, Some(&a)), Err(b));
    }

    #[test]
    fn keys_of_distinct_names_differ() {
        assert_ne!(key("ab", "c"), key("a", "bc"));
        assert_ne!(key("a", "b"), key("b", "a"));
        assert_eq!(key("a", "b"), key("a", "b"));
    }

    proptest! {
        /// Whatever the order of claims and releases, a name is held by at
        /// most one node, and a release frees only its own claim.
        #[test]
        fn one_node_at_a_time(ops in prop::collection::vec((0u16..3, 0u64..3, any::<bool>()), 0..60)) {
            let mut t = ClaimTable::default();
            let x = name("app", "x");
            let mut ours: Option<Holder> = None;
            for (node, conn, claim) in ops {
                let h = holder(node, 1, conn);
                if claim {
                    let got = t.claim(x.clone(), h, None);
                    match ours {
                        Some(o) if o.addr != h.addr => prop_assert_eq!(got, Err(o)),
                        _ => {
                            prop_assert_eq!(got, Ok(()));
                            ours = Some(h);
                        }
                    }
                } else {
                    t.release(&x, &h);
                    if ours == Some(h) {
                        ours = None;
                    }
                }
                prop_assert_eq!(t.holder(&x), ours.as_ref());
            }
        }
    }
}
