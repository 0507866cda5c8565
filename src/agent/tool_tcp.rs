//! `banger-agent --tcp-connect HOST:PORT`: a byte pipe between the tool's stdin/stdout and a
//! TCP connection made inside the guest. bangerd runs it through the agent's exec with stdin
//! as a pipe, which makes an agent exec a tunnel: `banger vm ssh-proxy` reaches the guest's
//! port 22 this way, with no port open to any network and no route to the guest needed.
//!
//! ```text
//!  stdin ──thread──▶ socket        EOF on stdin: shutdown(Write), the peer sees our end
//!  stdout ◀─────────  socket       EOF from the peer: stdout is done
//! ```
//!
//! The tool ends when both directions are over (each side's end of file, or an error), with
//! status 0, or 1 after an error. A connection that is refused is one line on stderr that
//! says nothing listens there, and status 1.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

/// How long connecting may take (inside the guest it is a loopback connect: instant or
/// refused; a name that resolves elsewhere may be slower).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes per read; what the agent forwards per stdout frame is its own business.
const CHUNK: usize = 64 * 1024;

/// The tool as a program.
pub fn main(target: &str) -> ExitCode {
    let stream = match connect(target) {
        Ok(stream) => stream,
        Err(error) => {
            eprintln!("banger-agent --tcp-connect: {error}");
            return ExitCode::FAILURE;
        }
    };
    match pipe(stream, std::io::stdin(), std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("banger-agent --tcp-connect {target}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Connects to `target` (HOST:PORT; `[::1]:22` for IPv6), trying each address it resolves
/// to. The error is a sentence for the user.
pub fn connect(target: &str) -> Result<TcpStream, String> {
    let addresses: Vec<_> = target
        .to_socket_addrs()
        .map_err(|e| format!("{target:?} is not HOST:PORT that resolves in the guest: {e}"))?
        .collect();
    let mut last = None;
    for address in &addresses {
        match TcpStream::connect_timeout(address, CONNECT_TIMEOUT) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(error) => last = Some(error),
        }
    }
    Err(match last {
        Some(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("nothing listens on {target} in the guest (connection refused)")
        }
        Some(error) => format!("cannot connect to {target} in the guest: {error}"),
        None => format!("{target} resolves to no address in the guest"),
    })
}

/// Copies `input` to the socket and the socket to `output` until both are over.
pub fn pipe(
    stream: TcpStream,
    mut input: impl Read + Send + 'static,
    mut output: impl Write,
) -> std::io::Result<()> {
    let mut to_socket = stream.try_clone()?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; CHUNK];
        let result = loop {
            match input.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if let Err(error) = to_socket.write_all(&buf[..n]) {
                        break Err(error);
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => break Err(error),
            }
        };
        // Half-close: the peer reads our end of file and may still answer.
        let _ = to_socket.shutdown(Shutdown::Write);
        result
    });
    let mut from_socket = stream;
    let mut buf = vec![0u8; CHUNK];
    let received = loop {
        match from_socket.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(error) = output.write_all(&buf[..n]).and_then(|()| output.flush()) {
                    break Err(error);
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => break Err(error),
        }
    };
    if received.is_err() {
        // Nothing more can come back: stop sending too, so the sender's write fails fast
        // rather than waiting on a stdin that may never end.
        let _ = from_socket.shutdown(Shutdown::Both);
        return received;
    }
    let _ = from_socket.shutdown(Shutdown::Read);
    // The peer is done sending; the tool ends when our side is done too (its stdin's end).
    match sender.join() {
        Ok(sent) => sent,
        Err(_) => Err(std::io::Error::other("the sending thread panicked")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_refused_connection_says_nothing_listens() {
        // A port that was just free: bind, read the port, close.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let error = connect(&format!("127.0.0.1:{port}")).unwrap_err();
        assert_eq!(
            error,
            format!("nothing listens on 127.0.0.1:{port} in the guest (connection refused)")
        );
        assert!(connect("no port").is_err());
    }

    #[test]
    fn bytes_go_both_ways_and_end_of_input_half_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        // The server reads everything to our end of file, then answers with what it got,
        // reversed: only a half-close lets it answer.
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            socket.read_to_end(&mut got).unwrap();
            got.reverse();
            socket.write_all(&got).unwrap();
        });
        let input: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        let mut expected = input.clone();
        expected.reverse();
        let mut output = Vec::new();
        pipe(
            connect(&address).unwrap(),
            std::io::Cursor::new(input),
            &mut output,
        )
        .unwrap();
        server.join().unwrap();
        assert_eq!(output.len(), expected.len());
        assert!(output == expected, "binary-safe both ways");
    }
}
