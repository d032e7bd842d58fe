//! Parity tests against candle-transformers (being written).
