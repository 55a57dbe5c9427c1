//! A TCP proxy on 127.0.0.1 in front of a real server that stops answering
//! after a set number of HTTP responses: the server going away in the
//! middle of a conversation, at a point the test chooses, while the server
//! behind it keeps its state for the test to inspect.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Default)]
struct Shared {
    /// Complete responses forwarded to clients.
    answered: AtomicUsize,
    /// Connections refused or cut once the proxy stopped.
    cut: AtomicUsize,
    down: AtomicBool,
    closing: AtomicBool,
    /// Held while one response is checked, forwarded and counted: two
    /// connections answering at once never let more than `allow` through.
    gate: std::sync::Mutex<()>,
}

pub struct CutoffProxy {
    pub port: u16,
    allow: usize,
    shared: Arc<Shared>,
}

impl CutoffProxy {
    /// Forwards to `upstream` until `allow` responses have gone through,
    /// then closes every connection and refuses new ones.
    pub fn start(upstream: u16, allow: usize) -> CutoffProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.closing.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if s.down.load(Ordering::SeqCst) {
                    s.cut.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (s1, s2) = (s.clone(), s.clone());
                let (c1, v1) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || requests(c1, v1, &s1));
                std::thread::spawn(move || responses(server, client, &s2, allow));
            }
        });
        CutoffProxy {
            port,
            allow,
            shared,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Whether the proxy let exactly the allowed responses through and
    /// then refused or cut at least one connection.
    pub fn stopped_midway(&self) -> bool {
        self.shared.answered.load(Ordering::SeqCst) == self.allow
            && self.shared.cut.load(Ordering::SeqCst) > 0
    }

    pub fn counts(&self) -> (usize, usize) {
        (
            self.shared.answered.load(Ordering::SeqCst),
            self.shared.cut.load(Ordering::SeqCst),
        )
    }
}

impl Drop for CutoffProxy {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn cut(a: &TcpStream, b: &TcpStream, s: &Shared) {
    s.cut.fetch_add(1, Ordering::SeqCst);
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

/// Client to server, until either side closes or the proxy stops.
fn requests(mut client: TcpStream, mut server: TcpStream, s: &Shared) {
    let mut chunk = [0u8; 65536];
    loop {
        let n = match client.read(&mut chunk) {
            Ok(0) | Err(_) => {
                let _ = server.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        if s.down.load(Ordering::SeqCst) {
            return cut(&client, &server, s);
        }
        if server.write_all(&chunk[..n]).is_err() {
            return;
        }
    }
}

/// Server to client, one whole response at a time, so that a cut never
/// falls inside a response that was counted as answered.
fn responses(mut server: TcpStream, mut client: TcpStream, s: &Shared, allow: usize) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        while let Some(len) = response_len(&buf) {
            let _turn = s.gate.lock().unwrap_or_else(|e| e.into_inner());
            if s.down.load(Ordering::SeqCst) {
                return cut(&client, &server, s);
            }
            if client.write_all(&buf[..len]).is_err() {
                return;
            }
            buf.drain(..len);
            if s.answered.fetch_add(1, Ordering::SeqCst) + 1 >= allow {
                s.down.store(true, Ordering::SeqCst);
            }
        }
        match server.read(&mut chunk) {
            Ok(0) | Err(_) => {
                if !buf.is_empty() && !s.down.load(Ordering::SeqCst) {
                    let _ = client.write_all(&buf);
                }
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The length of the first complete response in `buf`, framed by its
/// Content-Length (a response without one runs to the end of the stream).
fn response_len(buf: &[u8]) -> Option<usize> {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..head]);
    let body: usize = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })?;
    (buf.len() >= head + body).then_some(head + body)
}
