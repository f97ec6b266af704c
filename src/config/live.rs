//! The configuration in force: replaced whole on SIGHUP, read as an `Arc` snapshot by everyone
//! (a lock held for a pointer copy, never across work).

use super::Config;
use crate::sync::lock;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct ConfigCell(Mutex<Arc<Config>>);

impl ConfigCell {
    pub fn new(c: Config) -> ConfigCell {
        ConfigCell(Mutex::new(Arc::new(c)))
    }

    pub fn get(&self) -> Arc<Config> {
        lock(&self.0).clone()
    }

    pub fn set(&self, c: Config) {
        *lock(&self.0) = Arc::new(c);
    }
}
