//! CNI spec versions this plugin speaks, and what each allows.
//!
//! 0.3.0 introduced today's result shape (interfaces, ips, routes, dns); 0.4.0 added
//! CHECK; 1.0.0 dropped `ips[].version`; 1.1.0 added STATUS and GC and a few result
//! fields (`interfaces[].mtu`, route attributes). Versions before 0.3.0 used another
//! result shape (`ip4`/`ip6`) and are refused (SPEC.md, "Version considerations").
use std::fmt;

use crate::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    /// The newest version: used for output when the input's version is unknown.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Parses a `cniVersion`; anything not supported is error 1 naming the versions
    /// that are.
    pub fn parse(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| Error::IncompatibleVersion {
                detail: format!(
                    "cniVersion {s:?} is not supported; rama supports {}",
                    Self::ALL.map(Self::as_str).join(", ")
                ),
            })
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// STATUS and GC exist from 1.1.0 on.
    pub fn has_status_and_gc(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// `ips[].version` ("4"/"6") is required before 1.0.0 and gone after.
    pub fn ips_carry_version(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// `interfaces[].mtu` exists from 1.1.0 on.
    pub fn interfaces_carry_mtu(self) -> bool {
        self >= CniVersion::V1_1_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_and_refuses_the_rest_with_code_1() {
        for v in CniVersion::ALL {
            assert_eq!(CniVersion::parse(v.as_str()).expect("supported"), v);
        }
        for bad in ["0.1.0", "0.2.0", "1.2.0", "1.0", "", "v1.0.0"] {
            let e = CniVersion::parse(bad).expect_err(bad);
            assert_eq!(e.code(), 1, "{bad}");
            assert!(
                e.to_string().contains("1.1.0"),
                "names what is supported: {e}"
            );
        }
        assert!(CniVersion::V0_4_0.has_check() && !CniVersion::V0_3_1.has_check());
        assert!(CniVersion::V1_1_0.has_status_and_gc() && !CniVersion::V1_0_0.has_status_and_gc());
        assert!(CniVersion::V0_4_0.ips_carry_version() && !CniVersion::V1_0_0.ips_carry_version());
    }
}
