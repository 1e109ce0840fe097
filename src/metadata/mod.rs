//! Client metadata: typed values, validation of updates, and the per-shard
//! store with its indexes. Pure code: no I/O, no clock.

mod probe;
mod value;

pub use probe::{IndexPlan, Probe};
pub use value::{MetaType, MetaValue, Metadata};
