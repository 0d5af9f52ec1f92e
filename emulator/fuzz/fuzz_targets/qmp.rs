//! Fuzzes the QMP request handling: raw bytes through the framer and the
//! dispatcher, before and after capabilities negotiation, and the same
//! bytes as a parsed JSON value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vireo_emulator::qmp::{NullBackend, Session};

fuzz_target!(|data: &[u8]| {
    let mut fresh = Session::new(Arc::new(NullBackend));
    let _ = fresh.handle_bytes(data);

    let mut session = Session::new(Arc::new(NullBackend));
    let _ = session.handle_bytes(br#"{"execute": "qmp_capabilities"}"#);
    let _ = session.handle_bytes(data);
    if let Ok(value) = serde_json::from_slice(data) {
        let _ = session.handle_value(value);
    }
});
