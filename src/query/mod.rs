//! Query engine (contract §5).
