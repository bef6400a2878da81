//! A fault proxy on loopback in front of Azurite, switched while commands run: it passes
//! traffic, refuses connections, stalls, throttles (503 + Retry-After), answers 500, cuts
//! replies mid-body, or slows the link. Switching the mode drops every open connection, so
//! pooled keep-alive connections see the new mode at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Nothing listens: connections are refused.
    Refuse,
    /// Connections are accepted and requests read, but nothing is ever answered.
    Stall,
    /// Every request is answered 503 ServerBusy with `Retry-After: 1`.
    Throttle,
    /// Every request is answered 500.
    Error500,
    /// Requests reach storage; each connection's replies are cut after this many bytes.
    CutReplies(usize),
    /// Both directions at most this many bytes per second.
    Slow(u64),
}

pub struct Proxy {
    port: u16,
    account_path: String,
    mode: watch::Sender<(Mode, u64)>,
    _rt: Arc<tokio::runtime::Runtime>,
}

impl Proxy {
    /// A proxy in front of `endpoint` (`http://127.0.0.1:<port>/<account>`).
    pub fn start(endpoint: &str) -> Proxy {
        let rest = endpoint.strip_prefix("http://").expect("http endpoint");
        let (hostport, account) = rest.split_once('/').expect("account path");
        let upstream: SocketAddr = hostport.parse().expect("upstream address");
        let rt = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime"),
        );
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = std_listener.local_addr().expect("addr").port();
        drop(std_listener);
        let (tx, rx) = watch::channel((Mode::Pass, 0u64));
        rt.spawn(accept_loop(port, upstream, rx));
        // Wait until it listens.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Proxy {
            port,
            account_path: account.to_string(),
            mode: tx,
            _rt: rt,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, self.account_path)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_modify(|(m, generation)| {
            *m = mode;
            *generation += 1;
        });
        // Let the accept loop close or reopen its socket.
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn accept_loop(port: u16, upstream: SocketAddr, mut rx: watch::Receiver<(Mode, u64)>) {
    loop {
        let (mode, _) = *rx.borrow();
        if mode == Mode::Refuse {
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let listener = (|| {
            let s = TcpSocket::new_v4()?;
            s.set_reuseaddr(true)?;
            s.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
            s.listen(128)
        })();
        let Ok(listener) = listener else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((conn, _)) = accepted else { continue };
                    let rx = rx.clone();
                    tokio::spawn(serve(conn, upstream, rx));
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if rx.borrow().0 == Mode::Refuse {
                        break;
                    }
                }
            }
        }
    }
}

/// Serves one connection in the mode current when it was accepted, until the mode changes.
async fn serve(conn: TcpStream, upstream: SocketAddr, mut rx: watch::Receiver<(Mode, u64)>) {
    let (mode, _) = *rx.borrow_and_update();
    let work = async move {
        match mode {
            Mode::Pass => {
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let mut conn = conn;
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
            }
            Mode::Refuse => {}
            Mode::Stall => {
                let mut conn = conn;
                let mut buf = vec![0u8; 64 << 10];
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
                // The client closed its side; stay silent until the mode changes.
                std::future::pending::<()>().await;
            }
            Mode::Throttle => answer_all(conn, "503 Server Busy", "ServerBusy", true).await,
            Mode::Error500 => answer_all(conn, "500 Internal Error", "InternalError", false).await,
            Mode::CutReplies(n) => {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = conn.into_split();
                let (mut ur, mut uw) = up.into_split();
                let to_up = async { tokio::io::copy(&mut cr, &mut uw).await };
                let to_client = async {
                    let mut left = n;
                    let mut buf = vec![0u8; 16 << 10];
                    while left > 0 {
                        let got = match ur.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(g) => g,
                        };
                        let take = got.min(left);
                        if cw.write_all(&buf[..take]).await.is_err() {
                            break;
                        }
                        left -= take;
                    }
                };
                tokio::select! {
                    _ = to_up => {}
                    _ = to_client => {}
                }
                // Dropping both halves resets the connection mid-reply.
            }
            Mode::Slow(rate) => {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (cr, cw) = conn.into_split();
                let (ur, uw) = up.into_split();
                tokio::join!(slow_copy(cr, uw, rate), slow_copy(ur, cw, rate));
            }
        }
    };
    tokio::select! {
        _ = work => {}
        _ = rx.changed() => {}
    }
}

async fn slow_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rate: u64,
) {
    let mut buf = vec![0u8; 8 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
    }
    let _ = to.shutdown().await;
}

/// Reads each request (head and Content-Length body) and answers it with `status`.
async fn answer_all(mut conn: TcpStream, status: &str, code: &str, retry_after: bool) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let head_end = loop {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
        let body_len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while pending.len() < head_end + body_len {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
        pending.drain(..head_end + body_len);
        let extra = if retry_after {
            "Retry-After: 1\r\n"
        } else {
            ""
        };
        let reply = format!(
            "HTTP/1.1 {status}\r\nx-ms-error-code: {code}\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        if conn.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}
