//! `mfp-server federation …`: the operator endpoints of a running server (`operator.rs`)
//! from the command line. The admin listener's address and the token come from the
//! server's own configuration (`admin.host`, `admin.port`, `admin.token` or
//! `admin.token_env`), so the token never has to be typed or appear in a shell's history.
//!
//! The answer is read as plain HTTP/1.1 from the admin listener, with its size bounded and
//! every wait timed out; what it says is printed, never trusted to be well formed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::TokenSource;

/// Largest answer read (a listing of many channels is well below it).
const MAX_ANSWER: u64 = 16 << 20;
/// Time to connect to the admin listener.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the answer: a reset waits for the peer (the federation's open timeout).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// `mfp-server federation`.
#[derive(Debug, clap::Args)]
pub(crate) struct FederationArgs {
    /// The running server's YAML configuration (its admin listener and `admin.token`).
    #[arg(short, long, env = "MFP_CONFIG")]
    config: PathBuf,
    /// The admin listener's address (`host:port`), when it is not the configuration's
    /// (port 0, a proxy).
    #[arg(long)]
    admin: Option<String>,
    #[command(subcommand)]
    command: FederationCmd,
}

/// What to ask the server.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum FederationCmd {
    /// Lists the peers with their links, the native peers' channels with their status and
    /// positions, and the recovery counters (JSON).
    Status,
    /// Suspends a channel here: sends on it fail, the peer's messages wait in its log.
    Suspend {
        /// The channel (32 hex digits, as `status` lists it).
        channel: String,
    },
    /// Resumes a suspended channel: both runtimes compare positions and what waited goes.
    Resume {
        /// The channel.
        channel: String,
    },
    /// Resets a suspended channel with its peer: both chains restart from a new secret and
    /// the unacknowledged messages of both sides are discarded.
    Reset {
        /// The channel.
        channel: String,
    },
    /// Rotates this side's outbound chain of a channel now.
    Rotate {
        /// The channel.
        channel: String,
    },
}

/// Asks the server; returns what to print (the JSON answer), or why it could not be done.
pub(crate) fn run(args: &FederationArgs) -> Result<String, String> {
    let cfg = crate::config::load(&args.config).map_err(|e| e.to_string())?;
    let file = args.config.display();
    let token = match &cfg.admin_token {
        TokenSource::None => {
            return Err(format!(
                "{file}: no admin.token or admin.token_env: the server's operator endpoints are off (set one and restart it)"
            ));
        }
        TokenSource::Literal(t) => zeroize::Zeroizing::new(t.clone()),
        TokenSource::Env(var) => match std::env::var(var) {
            Ok(t) if !t.is_empty() => zeroize::Zeroizing::new(t),
            _ => return Err(format!("{file}: admin.token_env {var} is not set here (set it as for the server)")),
        },
    };
    let admin = match (&args.admin, &cfg.admin_addr) {
        (Some(a), _) => a.clone(),
        (None, Some(a)) => a.clone(),
        (None, None) => return Err(format!("{file}: admin.enabled is false: the server has no admin listener")),
    };
    let (method, path) = match &args.command {
        FederationCmd::Status => ("GET", "/federation".to_string()),
        FederationCmd::Suspend { channel } => ("POST", action_path(channel, "suspend")?),
        FederationCmd::Resume { channel } => ("POST", action_path(channel, "resume")?),
        FederationCmd::Reset { channel } => ("POST", action_path(channel, "reset")?),
        FederationCmd::Rotate { channel } => ("POST", action_path(channel, "rotate")?),
    };
    let (status, body) = request(&admin, method, &path, &token)?;
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    if (200..300).contains(&status) {
        return Ok(match json {
            Some(v) => serde_json::to_string_pretty(&v).unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned()),
            None => String::from_utf8_lossy(&body).into_owned(),
        });
    }
    let said = json
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(serde_json::Value::as_str)
        .map_or_else(|| String::from_utf8_lossy(&body).trim().to_string(), str::to_string);
    Err(format!("{method} {path} on {admin}: {status}: {said}"))
}

fn action_path(channel: &str, action: &str) -> Result<String, String> {
    let id: mfp_core::ChannelId = channel.parse().map_err(|_| {
        format!("{channel:?} is not a channel id: 32 hex digits, as `mfp-server federation status` lists them")
    })?;
    Ok(format!("/federation/channels/{id}/{action}"))
}

/// Where to connect for `admin`: an unspecified address (`0.0.0.0`, `::`) is the listener
/// on every interface, reached on loopback.
fn target(admin: &str) -> Result<SocketAddr, String> {
    let addr = admin
        .to_socket_addrs()
        .map_err(|e| format!("admin listener {admin}: {e}"))?
        .next()
        .ok_or_else(|| format!("admin listener {admin}: no address"))?;
    Ok(match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => SocketAddr::from(([127, 0, 0, 1], a.port())),
        SocketAddr::V6(a) if a.ip().is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port())),
        a => a,
    })
}

/// One HTTP/1.1 request; the status code and the body of the answer.
fn request(admin: &str, method: &str, path: &str, token: &str) -> Result<(u16, Vec<u8>), String> {
    let addr = target(admin)?;
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("cannot reach the admin listener at {addr}: {e} (is the server running? --admin ADDR)"))?;
    let io = |e: std::io::Error| format!("admin listener {addr}: {e}");
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(CONNECT_TIMEOUT)).map_err(io)?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        token
    );
    s.write_all(head.as_bytes()).map_err(io)?;
    drop(zeroize::Zeroizing::new(head));
    let mut raw = Vec::new();
    s.take(MAX_ANSWER + 1).read_to_end(&mut raw).map_err(io)?;
    if raw.len() as u64 > MAX_ANSWER {
        return Err(format!("admin listener {addr}: an answer above {MAX_ANSWER} bytes"));
    }
    parse_answer(&raw).ok_or_else(|| format!("admin listener {addr}: not an HTTP answer"))
}

/// The status code and body of an HTTP/1.1 answer read to its end (`Content-Length`,
/// chunked, or up to the close); `None` if it is not one.
fn parse_answer(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(raw.get(..split)?).ok()?;
    let rest = raw.get(split + 4..)?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.strip_prefix("HTTP/1.")?.get(2..)?.split(' ').next()?.parse().ok()?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let (name, value) = l.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().ok()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some((status, body))
}

/// The body of a chunked answer.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(rest.get(..end)?).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = rest.get(end + 2..)?;
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size.checked_add(2)?..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_by_length_by_chunks_and_to_the_close() {
        let a =
            b"HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{\"error\":\"x\"}";
        assert_eq!(parse_answer(a), Some((409, b"{\"error\":\"x\"}".to_vec())));
        let c = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_answer(c), Some((200, b"abcde".to_vec())));
        assert_eq!(parse_answer(b"HTTP/1.0 503 Busy\r\n\r\nlater"), Some((503, b"later".to_vec())));
    }

    #[test]
    fn what_is_not_an_answer_is_refused_without_panicking() {
        for bad in [
            &b""[..],
            b"garbage",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff\r\nab",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert_eq!(parse_answer(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn channel_ids_are_checked_before_anything_is_sent() {
        let id = "ab".repeat(16);
        assert_eq!(action_path(&id, "reset").unwrap(), format!("/federation/channels/{id}/reset"));
        assert!(action_path("abc", "reset").unwrap_err().contains("32 hex digits"));
        assert!(action_path("../../metrics", "reset").is_err());
    }

    #[test]
    fn an_unspecified_listen_address_is_reached_on_loopback() {
        assert_eq!(target("0.0.0.0:9877").unwrap(), "127.0.0.1:9877".parse().unwrap());
        assert_eq!(target("[::]:9877").unwrap(), "[::1]:9877".parse().unwrap());
        assert_eq!(target("127.0.0.1:1").unwrap(), "127.0.0.1:1".parse().unwrap());
        assert!(target("no-port").is_err());
    }
}
