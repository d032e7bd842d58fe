//! `agent` command line.
fn main() {
    println!("sizespec agent: not yet implemented");
}
