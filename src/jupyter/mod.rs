//! Jupyter wire protocol client (placeholder until written).
