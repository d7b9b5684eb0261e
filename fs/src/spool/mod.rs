//! The on-disk spool (being written).
