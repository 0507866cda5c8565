//! A small HTTP/1.1 file server on 127.0.0.1 for tests that download (kernel pulls): each
//! path answers with what the test set — the bytes, an error status, a response cut short,
//! or one that stops half-way until the test lets it go on (to kill a downloader in the
//! middle of a download). Plain `std`: one thread accepts, one thread per connection; every
//! response closes its connection.
//!
//! ```ignore
//! let server = FileServer::start();
//! server.serve("/k.deb", Reply::Bytes(deb));
//! let url = server.url("/k.deb");
//! ```

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a path answers.
#[derive(Clone)]
pub enum Reply {
    /// `200 OK` with these bytes.
    Bytes(Arc<Vec<u8>>),
    /// This status and a one-line body.
    Status(u16),
    /// `200 OK` announcing the whole length, but only the first `send` bytes are sent before
    /// the connection closes.
    Truncated { bytes: Arc<Vec<u8>>, send: usize },
    /// `200 OK`: the first `pause_after` bytes, then a stop until `gate` is opened (or a
    /// minute passes), then the rest.
    Paused {
        bytes: Arc<Vec<u8>>,
        pause_after: usize,
        gate: Gate,
    },
}

impl Reply {
    pub fn bytes(bytes: Vec<u8>) -> Reply {
        Reply::Bytes(Arc::new(bytes))
    }
}

/// Where a [`Reply::Paused`] response stops: the test waits for it to be reached, then opens
/// it.
#[derive(Clone, Default)]
pub struct Gate {
    state: Arc<(Mutex<(bool, bool)>, Condvar)>,
}

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Waits until a response has stopped here; false when `timeout` passed first.
    pub fn wait_reached(&self, timeout: Duration) -> bool {
        let (lock, changed) = &*self.state;
        let deadline = Instant::now() + timeout;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !state.0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Lets stopped (and later) responses go on.
    pub fn open(&self) {
        let (lock, changed) = &*self.state;
        lock.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        changed.notify_all();
    }

    fn reach_and_wait(&self) {
        let (lock, changed) = &*self.state;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        state.0 = true;
        changed.notify_all();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !state.1 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            state = changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[derive(Default)]
struct Routes {
    replies: HashMap<String, Reply>,
    requests: HashMap<String, usize>,
}

/// The server; dropping it stops accepting.
pub struct FileServer {
    addr: SocketAddr,
    routes: Arc<Mutex<Routes>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl FileServer {
    pub fn start() -> FileServer {
        FileServer::start_on(TcpListener::bind("127.0.0.1:0").expect("bind a test HTTP server"))
    }

    /// Serves on `listener` (one bound in another network namespace, say).
    pub fn start_on(listener: TcpListener) -> FileServer {
        let addr = listener.local_addr().expect("its address");
        let routes = Arc::new(Mutex::new(Routes::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (routes, stop) = (routes.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let routes = routes.clone();
                    std::thread::spawn(move || {
                        let _ = answer(stream, &routes);
                    });
                }
            })
        };
        FileServer {
            addr,
            routes,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT/`
    pub fn base(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sets what `path` answers from now on.
    pub fn serve(&self, path: &str, reply: Reply) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replies
            .insert(path.to_owned(), reply);
    }

    /// How many requests `path` got.
    pub fn requests(&self, path: &str) -> usize {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept; it ends at its next connection. Not joined: a listener
        // bound in another network namespace cannot be reached from here to wake it.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
        drop(self.acceptor.take());
    }
}

fn answer(stream: TcpStream, routes: &Mutex<Routes>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let reply = {
        let mut routes = routes.lock().unwrap_or_else(|e| e.into_inner());
        *routes.requests.entry(path.clone()).or_default() += 1;
        routes.replies.get(&path).cloned()
    };
    let mut stream = stream;
    let head = |status: &str, length: usize| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {length}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
        )
    };
    match reply {
        None => {
            let body = format!("nothing at {path}\n");
            stream.write_all(head("404 Not Found", body.len()).as_bytes())?;
            stream.write_all(body.as_bytes())?;
        }
        Some(Reply::Status(code)) => {
            let body = format!("status {code} for {path}\n");
            stream.write_all(head(&format!("{code} Test"), body.len()).as_bytes())?;
            stream.write_all(body.as_bytes())?;
        }
        Some(Reply::Bytes(bytes)) => {
            stream.write_all(head("200 OK", bytes.len()).as_bytes())?;
            stream.write_all(&bytes)?;
        }
        Some(Reply::Truncated { bytes, send }) => {
            stream.write_all(head("200 OK", bytes.len()).as_bytes())?;
            stream.write_all(&bytes[..send.min(bytes.len())])?;
        }
        Some(Reply::Paused {
            bytes,
            pause_after,
            gate,
        }) => {
            stream.write_all(head("200 OK", bytes.len()).as_bytes())?;
            let cut = pause_after.min(bytes.len());
            stream.write_all(&bytes[..cut])?;
            stream.flush()?;
            gate.reach_and_wait();
            stream.write_all(&bytes[cut..])?;
        }
    }
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}
