//! sizespec agent: everything that touches a GPU (or the CPU as one).
