//! Cold-start benchmark (filled in later).

fn main() {}
