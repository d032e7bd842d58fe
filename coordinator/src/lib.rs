//! sizespec coordinator: plans, places and journals model tasks; aggregates results. Never links candle.
pub mod report;
