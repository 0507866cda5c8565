//! The guest's end of the agent's virtio-serial port: finding it, and turning its blocking
//! reads and writes into the channels the multiplexer ([`crate::mux`]) serves.
//!
//! QEMU exposes `-device virtserialport,name=banger.agent` to the guest as a character device
//! `/dev/vportNpM`. Nothing names it `banger.agent` in `/dev` (there is no udev in an initrd or
//! a container image), so the port is found through `/sys/class/virtio-ports/*/name`. The
//! name arrives from the host a moment after the device appears, so the search retries for a
//! while.
//!
//! What the guest driver does, and why the threads below are shaped as they are:
//! - a read waits for data while a host is connected, and returns end of file at once while
//!   none is (poll says readable and hung up): so after an end of file the reader tells the
//!   multiplexer the host is gone (once) and looks again every [`HOST_POLL`];
//! - a write waits while no host is connected, and takes at most 32 KiB at a time (the
//!   multiplexer's batches are no larger, so a frame is never split by a short write);
//! - only one process may open the port: a second agent fails with EBUSY.
//!
//! tokio has no type for such a device (its reads do not fit epoll's model while the host is
//! away), and the agent is built without tokio's `fs`, so two plain threads do the IO and
//! talk to the async side through bounded channels.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::mux::{Port, PortEvent};

/// The name QEMU gives the agent's port (`virtserialport,name=…`).
pub const AGENT_PORT_NAME: &str = "banger.agent";

/// How long the agent waits for its port to appear at start-up.
pub const PORT_APPEAR_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the guest kernel lists virtio-serial ports.
pub const SYS_VIRTIO_PORTS: &str = "/sys/class/virtio-ports";

/// How often the reader looks for a host to come back after one left.
pub const HOST_POLL: Duration = Duration::from_millis(50);

/// Largest read from the port.
const READ_CHUNK: usize = 64 * 1024;

/// The device of the port called `name`, from the listing in `sys_dir`, waiting up to
/// `timeout` for it to appear.
pub fn find_port(sys_dir: &Path, name: &str, timeout: Duration) -> io::Result<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(device) = lookup_port(sys_dir, name) {
            return Ok(device);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no virtio-serial port named {name} in {} after {} ms (is virtio_console loaded, \
                     and does the VMM give the guest `-device virtserialport,name={name}`?)",
                    sys_dir.display(),
                    timeout.as_millis()
                ),
            ));
        }
        std::thread::sleep(HOST_POLL);
    }
}

fn lookup_port(sys_dir: &Path, name: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys_dir).ok()?;
    let mut found: Vec<String> = entries
        .flatten()
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("name"))
                .is_ok_and(|text| text.trim_end_matches('\n') == name)
        })
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    found.sort();
    found.first().map(|port| Path::new("/dev").join(port))
}

/// The opened port.
pub struct SerialPort {
    path: PathBuf,
    file: File,
}

impl SerialPort {
    /// Finds the port called `name` (waiting up to `timeout`) and opens it.
    pub fn open_named(name: &str, timeout: Duration) -> io::Result<SerialPort> {
        let path = find_port(Path::new(SYS_VIRTIO_PORTS), name, timeout)?;
        SerialPort::open(&path)
    }

    /// Opens the port's device for reading and writing.
    pub fn open(path: &Path) -> io::Result<SerialPort> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
        Ok(SerialPort {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts the port's reader and writer threads. They live as long as the agent.
    pub fn into_port(self) -> io::Result<Port> {
        let writer = self.file.try_clone().map_err(|e| {
            io::Error::new(e.kind(), format!("duplicate {}: {e}", self.path.display()))
        })?;
        Ok(spawn_port_threads(self.file, writer))
    }
}

/// Bridges a blocking device (or anything with its read semantics: end of file while no host
/// is connected) to the multiplexer's channels, with one thread per direction.
pub fn spawn_port_threads<R, W>(mut reader: R, mut writer: W) -> Port
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let (events_tx, events) = mpsc::channel::<PortEvent>(4);
    let (writes, mut writes_rx) = mpsc::channel::<Vec<u8>>(4);
    std::thread::Builder::new()
        .name("serial-read".into())
        .spawn(move || {
            let mut buf = vec![0u8; READ_CHUNK];
            let mut host_connected = true;
            loop {
                let event = match reader.read(&mut buf) {
                    Ok(0) => {
                        if host_connected {
                            host_connected = false;
                            debug!("the host left the agent port");
                            Some(PortEvent::HostGone)
                        } else {
                            // The driver cannot tell us when a host comes back without a
                            // signal handler; looking again shortly costs one syscall.
                            std::thread::sleep(HOST_POLL);
                            None
                        }
                    }
                    Ok(n) => {
                        host_connected = true;
                        Some(PortEvent::Data(buf[..n].to_vec()))
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
                    Err(e) => {
                        warn!("reading the agent port failed: {e}");
                        std::thread::sleep(HOST_POLL * 10);
                        None
                    }
                };
                if let Some(event) = event
                    && events_tx.blocking_send(event).is_err()
                {
                    return; // the multiplexer is gone
                }
            }
        })
        .map_err(|e| warn!("cannot start the port reader: {e}"))
        .ok();
    std::thread::Builder::new()
        .name("serial-write".into())
        .spawn(move || {
            while let Some(batch) = writes_rx.blocking_recv() {
                if let Err(e) = writer.write_all(&batch).and_then(|()| writer.flush()) {
                    // The session this batch belonged to is broken either way; the host
                    // starts a new one, whose hello the reader will see.
                    warn!("writing the agent port failed: {e}");
                    std::thread::sleep(HOST_POLL * 10);
                }
            }
        })
        .map_err(|e| warn!("cannot start the port writer: {e}"))
        .ok();
    Port { events, writes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_by_its_name_and_says_what_is_missing() {
        let sys = tempfile::tempdir().unwrap();
        for (port, name) in [("vport0p1", "org.other\n"), ("vport1p1", "banger.agent\n")] {
            std::fs::create_dir(sys.path().join(port)).unwrap();
            std::fs::write(sys.path().join(port).join("name"), name).unwrap();
        }
        // A port whose name has not arrived yet has an empty (or unreadable) name file.
        std::fs::create_dir(sys.path().join("vport2p1")).unwrap();
        assert_eq!(
            find_port(sys.path(), AGENT_PORT_NAME, Duration::ZERO).unwrap(),
            Path::new("/dev/vport1p1")
        );
        let err = find_port(sys.path(), "absent", Duration::ZERO).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains("virtserialport,name=absent"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_reader_reports_a_host_that_left_once_and_the_writer_writes() {
        let (guest_end, mut host_end) = std::os::unix::net::UnixStream::pair().unwrap();
        let writer = guest_end.try_clone().unwrap();
        let mut port = spawn_port_threads(guest_end, writer);
        host_end.write_all(b"abc").unwrap();
        match port.events.recv().await {
            Some(PortEvent::Data(bytes)) => assert_eq!(bytes, b"abc"),
            other => panic!("unexpected {other:?}"),
        }
        port.writes.send(b"xyz".to_vec()).await.unwrap();
        let mut got = [0u8; 3];
        host_end.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"xyz");
        host_end.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(matches!(
            port.events.recv().await,
            Some(PortEvent::HostGone)
        ));
        // End of file again and again: no second HostGone while the host stays away.
        let next = tokio::time::timeout(HOST_POLL * 4, port.events.recv()).await;
        assert!(next.is_err(), "{next:?}");
    }
}
