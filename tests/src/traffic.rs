//! Real traffic between namespaces: ping (the iputils binary) and a TCP exchange
//! between sockets opened inside the namespaces, which also reports the source address
//! the server saw (to prove no NAT, or that masquerade happened).
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::Netns;

/// Pings `dst` from `from`; succeeds when at least one echo comes back. The first
/// packet may wait for neighbour resolution, hence a few packets. And a pod just
/// added on one node is known to the other nodes only after their agents' next sync
/// (in standalone mode they poll the state directory every 500 ms): until then the
/// sending node answers "unreachable", which ends a ping run at once — so a failed
/// run is tried again, for up to 5 s in all.
pub fn ping(from: &Netns, dst: IpAddr) -> Result<()> {
    let dst_s = dst.to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = from.exec_output("ping", &["-c", "3", "-i", "0.2", "-w", "4", "-q", &dst_s])?;
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "ping {dst} from {} failed: {}",
                from.name,
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Opens a TCP connection from `client` to `server_ip` (a listener inside `server`),
/// sends a line and reads the echo. Returns the client address the server saw.
pub fn tcp_exchange(server: &Netns, server_ip: IpAddr, client: &Netns) -> Result<IpAddr> {
    let port = 20000 + (std::process::id() % 20000) as u16;
    let listen = SocketAddr::new(server_ip, port);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let srv = server.run_in(move || -> Result<IpAddr> {
        let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
        listener.set_nonblocking(true)?;
        ready_tx.send(()).ok();
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            match listener.accept() {
                Ok((mut conn, peer)) => {
                    conn.set_nonblocking(false)?;
                    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
                    let mut buf = [0u8; 5];
                    conn.read_exact(&mut buf)?;
                    buf.reverse();
                    conn.write_all(&buf)?;
                    return Ok(peer.ip());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        bail!("no connection to {listen} within 8 s");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        }
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("server did not start")?;
    let cli = client.run_in(move || -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(6);
        let mut conn = loop {
            match TcpStream::connect_timeout(&listen, Duration::from_secs(2)) {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e).with_context(|| format!("connect {listen}")),
            }
        };
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.write_all(b"hello")?;
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf)?;
        if &buf != b"olleh" {
            bail!("unexpected echo {buf:?}");
        }
        Ok(())
    })?;
    let client_result = cli.join().map_err(|_| anyhow::anyhow!("client panicked"))?;
    let server_result = srv.join().map_err(|_| anyhow::anyhow!("server panicked"))?;
    client_result.with_context(|| format!("TCP client in {}", client.name))?;
    server_result.with_context(|| format!("TCP server in {}", server.name))
}
