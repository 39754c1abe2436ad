//! Rama's CNI plugin as a library, and the agent API it speaks.
//!
//! The container runtime executes `rama-cni` with `CNI_COMMAND` and friends in the
//! environment and the network configuration on stdin (CNI spec 1.1). The plugin is
//! small and synchronous: it checks its input ([`env`], [`config`], [`args`]), asks
//! the node agent over a unix socket ([`api`], [`client`]) and prints the result in
//! the configuration's spec version ([`result`]). A DEL the agent cannot take (it is
//! down) is written to a queue directory the agent completes when it starts
//! ([`queue`]), so DEL always succeeds.
//!
//! Every failure is the spec's error object with the spec's code ([`Error::code`]).
pub mod api;
pub mod args;
pub mod client;
pub mod config;
pub mod env;
pub mod plugin;
pub mod queue;
pub mod result;
pub mod version;

pub use version::CniVersion;

/// Everything the plugin refuses or fails at, each with its CNI error code
/// (SPEC.md, "Error codes": 1–99 are the spec's, 100+ the plugin's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("incompatible CNI version: {detail}")]
    IncompatibleVersion { detail: String },
    #[error("unsupported field in network configuration: {detail}")]
    UnsupportedField { detail: String },
    #[error("container unknown or does not exist: {detail}")]
    UnknownContainer { detail: String },
    #[error("invalid necessary environment variables: {detail}")]
    InvalidEnvironment { detail: String },
    #[error("I/O failure: {detail}")]
    Io { detail: String },
    #[error("failed to decode content: {detail}")]
    Decode { detail: String },
    #[error("invalid network configuration: {detail}")]
    InvalidConfig { detail: String },
    #[error("try again later: {detail}")]
    TryAgainLater { detail: String },
    #[error("plugin not available: {detail}")]
    NotAvailable { detail: String },
    /// An error the agent reported, with the code it chose.
    #[error("{msg}: {details}")]
    Agent {
        code: u32,
        msg: String,
        details: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The spec's well-known codes.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot take ADDs now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Rama's own: the agent failed at the request (netlink, the datapath, the store).
    pub const AGENT_FAILURE: u32 = 100;
}

impl Error {
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion { .. } => code::INCOMPATIBLE_VERSION,
            Error::UnsupportedField { .. } => code::UNSUPPORTED_FIELD,
            Error::UnknownContainer { .. } => code::UNKNOWN_CONTAINER,
            Error::InvalidEnvironment { .. } => code::INVALID_ENVIRONMENT,
            Error::Io { .. } => code::IO_FAILURE,
            Error::Decode { .. } => code::DECODE,
            Error::InvalidConfig { .. } => code::INVALID_CONFIG,
            Error::TryAgainLater { .. } => code::TRY_AGAIN_LATER,
            Error::NotAvailable { .. } => code::NOT_AVAILABLE,
            Error::Agent { code, .. } => *code,
        }
    }

    /// The short message (`msg`) of the spec's error object.
    pub fn msg(&self) -> String {
        match self {
            Error::IncompatibleVersion { .. } => "incompatible CNI version".into(),
            Error::UnsupportedField { .. } => "unsupported field".into(),
            Error::UnknownContainer { .. } => "container unknown or does not exist".into(),
            Error::InvalidEnvironment { .. } => "invalid environment variables".into(),
            Error::Io { .. } => "I/O failure".into(),
            Error::Decode { .. } => "failed to decode content".into(),
            Error::InvalidConfig { .. } => "invalid network configuration".into(),
            Error::TryAgainLater { .. } => "try again later".into(),
            Error::NotAvailable { .. } => "plugin not available".into(),
            Error::Agent { msg, .. } => msg.clone(),
        }
    }

    /// The long message (`details`): what is wrong, in words a person can act on.
    pub fn details(&self) -> String {
        match self {
            Error::IncompatibleVersion { detail }
            | Error::UnsupportedField { detail }
            | Error::UnknownContainer { detail }
            | Error::InvalidEnvironment { detail }
            | Error::Io { detail }
            | Error::Decode { detail }
            | Error::InvalidConfig { detail }
            | Error::TryAgainLater { detail }
            | Error::NotAvailable { detail } => detail.clone(),
            Error::Agent { details, .. } => details.clone(),
        }
    }

    /// The spec's error object, labelled with `version` (the configuration's, or the
    /// newest when the configuration could not be read).
    pub fn to_json(&self, version: CniVersion) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": version.as_str(),
            "code": self.code(),
            "msg": self.msg(),
            "details": self.details(),
        })
    }
}

pub(crate) fn invalid_env(detail: impl Into<String>) -> Error {
    Error::InvalidEnvironment {
        detail: detail.into(),
    }
}

pub(crate) fn invalid_config(detail: impl Into<String>) -> Error {
    Error::InvalidConfig {
        detail: detail.into(),
    }
}

pub(crate) fn unsupported(detail: impl Into<String>) -> Error {
    Error::UnsupportedField {
        detail: detail.into(),
    }
}

/// Defaults shared by the plugin's configuration and the agent's flags.
pub mod defaults {
    /// The agent's CNI socket.
    pub const SOCKET: &str = "/run/rama/cni.sock";
    /// Where the plugin queues DELs the agent could not take.
    pub const QUEUE_DIR: &str = "/var/lib/rama/cni-queue";
    /// How long the plugin waits for the agent. Kubelet gives the runtime two minutes
    /// per sandbox call (`--runtime-request-timeout`); failing well before that lets
    /// the runtime retry with a clear error instead of timing out itself.
    pub const AGENT_TIMEOUT_SECONDS: u64 = 30;
    /// The `type` of Rama's network configuration: runtimes execute the binary of
    /// that name from their CNI bin directories.
    pub const PLUGIN_TYPE: &str = "rama-cni";
}
