//! Passing file descriptors over the helper's socket (`SCM_RIGHTS`).
//!
//! This module owns the one place where the protocol carries more than frames: the answer to
//! [`crate::protocol::Request::BindDns`] is a normal frame (`dns_sockets`) followed by one
//! byte whose ancillary data holds the descriptors. Invariants:
//!
//! - The descriptors travel on a byte of their own, sent after the frame: the frame reader
//!   reads exactly a frame's bytes, so it never consumes (and so never silently closes) them.
//! - The receiver takes at most [`MAX_FDS`] descriptors and marks them close-on-exec as they
//!   arrive (`MSG_CMSG_CLOEXEC`); a message whose ancillary data was cut short, or that
//!   carries anything but descriptors, is an error, and every descriptor that did arrive is
//!   closed (they are owned from the moment they are received).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, recvmsg, sendmsg};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// The most descriptors one message carries (BindDns passes two).
pub const MAX_FDS: usize = 4;

/// The byte that carries the descriptors.
const MARKER: u8 = b'F';

/// Sends `fds` as one byte with `SCM_RIGHTS`. The descriptors stay open here; the peer gets
/// its own copies.
pub async fn send_fds(stream: &UnixStream, fds: &[OwnedFd]) -> io::Result<()> {
    if fds.is_empty() || fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} descriptors cannot be sent (1 to {MAX_FDS})", fds.len()),
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    loop {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            sendmsg::<UnixAddr>(
                stream.as_raw_fd(),
                &[IoSlice::new(&[MARKER])],
                &[ControlMessage::ScmRights(&raw)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(io::Error::from)
        });
        match sent {
            Ok(1) => return Ok(()),
            Ok(n) => {
                return Err(io::Error::other(format!(
                    "sending descriptors wrote {n} bytes instead of 1"
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receives the byte [`send_fds`] sent and the descriptors on it.
pub async fn recv_fds(stream: &UnixStream) -> io::Result<Vec<OwnedFd>> {
    loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || recv_fds_now(stream.as_raw_fd())) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

fn recv_fds_now(fd: RawFd) -> io::Result<Vec<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<UnixAddr>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    // Own what arrived before judging the message, so that nothing leaks on an error.
    let mut fds = Vec::new();
    let mut foreign = false;
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        match cmsg {
            ControlMessageOwned::ScmRights(raw) => {
                // SAFETY: the kernel just installed these descriptors in this process for
                // this message; nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
            _ => foreign = true,
        }
    }
    let bytes = msg.bytes;
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    if bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the connection closed before the descriptors arrived",
        ));
    }
    if byte[0] != MARKER || foreign || truncated || fds.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "expected descriptors after the answer, got byte {:#04x} with {} descriptor(s){}{}",
                byte[0],
                fds.len(),
                if truncated { ", cut short" } else { "" },
                if foreign {
                    ", and other ancillary data"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[tokio::test]
    async fn descriptors_cross_a_socket_pair_and_stay_usable() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut pipe_read, pipe_write) = std::io::pipe().unwrap();
        let sent = vec![OwnedFd::from(pipe_write)];
        send_fds(&a, &sent).await.unwrap();
        let received = recv_fds(&b).await.unwrap();
        assert_eq!(received.len(), 1);
        drop(sent);
        let mut writer = std::fs::File::from(received.into_iter().next().unwrap());
        writer.write_all(b"through").unwrap();
        drop(writer);
        let mut text = String::new();
        pipe_read.read_to_string(&mut text).unwrap();
        assert_eq!(text, "through");
    }

    #[tokio::test]
    async fn a_plain_byte_or_a_closed_peer_is_not_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        a.try_write(b"F").unwrap();
        let error = recv_fds(&b).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        drop(a);
        let error = recv_fds(&b).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
    }

    #[tokio::test]
    async fn sending_nothing_or_too_much_is_refused() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(send_fds(&a, &[]).await.is_err());
        let many: Vec<OwnedFd> = (0..=MAX_FDS)
            .map(|_| OwnedFd::from(std::fs::File::open("/dev/null").unwrap()))
            .collect();
        assert!(send_fds(&a, &many).await.is_err());
    }
}
