//! sizespec shared domain: pure logic and types, no candle, no tonic.
