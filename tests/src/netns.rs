//! Network namespaces owned by a test: created with `ip netns add`, deleted on drop.
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail};

/// A named network namespace, deleted (with everything in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Result<Self> {
        // A leftover from a crashed earlier run of the same test and pid is ours.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NAME args…`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs a command inside the namespace (`nsenter --net`, which keeps /sys and the
    /// bpffs mount as they are, unlike `ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let path = self.path();
        let mut all = vec![format!("--net={path}"), program.to_owned()];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        run("nsenter", &refs)
    }

    /// Like `exec`, returning the raw output whatever the exit status.
    pub fn exec_output(&self, program: &str, args: &[&str]) -> Result<Output> {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .arg(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {}", self.name))
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it opens live
    /// there), and returns its result.
    pub fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<T>> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path()))?;
        Ok(std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a namespace fd we hold open.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        }))
    }
}

impl Netns {
    /// `GET path` over HTTP/1.0 to `addr` inside this namespace: the whole response
    /// (status line, headers, body).
    pub fn http_get(&self, addr: std::net::SocketAddr, path: &str) -> Result<String> {
        let path = path.to_owned();
        self.run_in(move || http_get(addr, &path))?
            .join()
            .map_err(|_| anyhow::anyhow!("HTTP GET thread panicked"))?
            .map_err(Into::into)
    }
}

/// `GET path` over HTTP/1.0 to `addr` from this thread's namespace: the whole
/// response (status line, headers, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let timeout = std::time::Duration::from_secs(5);
    let mut conn = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    Ok(text)
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A directory (BPF pins, scratch files) removed on drop, also when a test panics.
pub struct DirGuard(pub std::path::PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command; its stdout on success, an error with stderr otherwise.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
