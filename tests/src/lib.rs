//! sizespec end-to-end test helpers: start a coordinator and N agents in one process on loopback.
