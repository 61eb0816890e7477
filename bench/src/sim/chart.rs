//! Line charts (stub).
