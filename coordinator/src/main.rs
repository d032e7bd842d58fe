//! `coordinator` command line.
fn main() {
    println!("sizespec coordinator: not yet implemented");
}
