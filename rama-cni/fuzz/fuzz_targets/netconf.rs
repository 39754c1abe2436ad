//! The network configuration on stdin: whatever the bytes, parsing answers (no
//! panic), a refusal carries one of the spec's configuration codes and says what is
//! wrong, and an accepted configuration is one the plugin can act on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rama_cni::{code, config, config::NetConf, result};

fuzz_target!(|data: &[u8]| {
    // The version the answer is rendered in is worked out even from garbage.
    let _ = config::output_version(config::object(data).ok().as_ref());
    match NetConf::parse(data) {
        Ok(conf) => {
            assert!(!conf.name.is_empty(), "accepted a network without a name");
            assert!(conf.socket.is_absolute(), "accepted a relative socket path");
            assert!(
                conf.queue_dir.is_absolute(),
                "accepted a relative queue directory"
            );
            if let Some(prev) = &conf.prev_result {
                // CHECK reads what it expects from prevResult: refusals, never panics.
                let _ = result::expected(prev, "eth0");
            }
        }
        Err(e) => {
            assert!(
                [
                    code::INCOMPATIBLE_VERSION,
                    code::UNSUPPORTED_FIELD,
                    code::DECODE,
                    code::INVALID_CONFIG
                ]
                .contains(&e.code()),
                "configuration refused with code {}: {e}",
                e.code()
            );
            assert!(!e.details().is_empty(), "a refusal that says nothing");
        }
    }
});
