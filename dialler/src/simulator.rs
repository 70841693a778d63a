//! The built-in carrier simulator.
