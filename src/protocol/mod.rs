//! Wire packets and encodings (contract §1, §2).
