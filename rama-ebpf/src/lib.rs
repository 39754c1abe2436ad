//! Empty library target: lets `rama-agent` name this crate as a build-dependency, so
//! cargo rebuilds the agent (and re-embeds the object) when the programs change.
#![no_std]
