//! Client metadata: typed values, validation of updates, and the per-shard
//! store with its indexes. Pure code: no I/O, no clock.
//!
//! - `value`: typed values and a client's metadata map.
//! - `validate`: update validation (all-or-nothing) and size estimates.
//! - [`ScalarKey`]: the `$eq` equivalence on scalars, shared by the indexes
//!   and anyone who must agree with them.
//! - [`ClientStore`]: one shard's clients with app and value indexes
//!   (layout in `store.rs`), answering probes with [`Candidates`].

mod apps;
mod candidates;
mod client_set;
mod consistency;
mod index;
mod probe;
mod scalar;
mod store;
mod touched;
mod validate;
mod value;

#[cfg(test)]
mod tests;

pub use candidates::Candidates;
pub use probe::{IndexPlan, Probe};
pub use scalar::ScalarKey;
pub use store::{ClientEntry, ClientIdx, ClientStore, probe_value_keys};
pub use touched::{Count, Kind, Touched, ValueKey, set_holder};
pub use validate::{
    ENTRY_OVERHEAD, RESERVED_KEYS, UpdateError, estimated_entry_size, estimated_size, json_len,
    parse_update,
};
pub use value::{MetaType, MetaValue, Metadata};
