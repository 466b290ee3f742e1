//! A config file's text: both services' loaders never panic, and a config
//! that parses is validated without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(config) = duplex_orchestrator::Config::parse(text) {
        let _ = config.validate();
    }
    if let Ok(config) = duplex_worker::Config::parse(text) {
        let _ = config.validate();
    }
});
