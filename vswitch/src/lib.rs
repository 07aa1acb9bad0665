#![deny(unsafe_code)]
pub mod control {
    pub mod api;
}
