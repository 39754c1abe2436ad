//! The CNI environment (CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME,
//! CNI_ARGS…), one `KEY=VALUE` per line of the input: whatever it holds, reading it
//! answers (no panic), a refusal is an environment or CNI_ARGS error, and what is
//! accepted is safe to use as a file name and an interface name.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use rama_cni::{code, env::Invocation};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    match Invocation::from_env(|k| vars.get(k).map(|v| (*v).to_owned())) {
        Ok(inv) => {
            if let Some(id) = &inv.container_id {
                // The DEL queue names a file after it.
                assert!(
                    !id.is_empty() && !id.contains('/') && !id.starts_with('.'),
                    "{id:?}"
                );
            }
            if let Some(ifname) = &inv.ifname {
                assert!(
                    !ifname.is_empty()
                        && ifname.len() <= 15
                        && !ifname.contains(['/', ' ', ':'])
                        && ifname != "."
                        && ifname != "..",
                    "accepted interface name {ifname:?}"
                );
            }
            if let Some(pod) = &inv.args.pod {
                assert!(!pod.namespace.is_empty() && !pod.name.is_empty());
                assert!(!pod.namespace.contains('/') && !pod.name.contains('/'));
            }
        }
        Err(e) => {
            assert!(
                [code::INVALID_ENVIRONMENT, code::UNSUPPORTED_FIELD].contains(&e.code()),
                "environment refused with code {}: {e}",
                e.code()
            );
            assert!(!e.details().is_empty(), "a refusal that says nothing");
        }
    }
});
