//! The built-in carrier simulator. (Its runtime parts sit behind the `runtime` feature.)
