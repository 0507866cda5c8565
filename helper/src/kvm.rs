//! `/dev/kvm` opened by the helper for a VMM that runs as the caller ([`crate::protocol::Request::OpenKvm`]).
//!
//! On hardened hosts `/dev/kvm` is `0600 root`: an ordinary user's QEMU cannot open it, but
//! QEMU 8.2+ takes the device as a descriptor (`-add-fd` and `-accel kvm,device=/dev/fdset/N`).
//! Both ends check what they hold: the helper that the path it opened is KVM's character
//! device (not a node or link planted in its place), the client that what arrived is.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

/// Where KVM's device is.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// KVM is the misc device 10:232 (`Documentation/admin-guide/devices.txt`).
const KVM_MAJOR: u32 = 10;
const KVM_MINOR: u32 = 232;

/// `KVM_GET_API_VERSION` (`_IO(KVMIO, 0x00)`), and the only version there has ever been.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_API_VERSION: libc::c_int = 12;

/// `/dev/kvm`, opened for reading and writing, close-on-exec, checked to be KVM.
pub fn open_kvm() -> io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(KVM_DEVICE)?;
    let fd = OwnedFd::from(file);
    check_kvm(&fd).map_err(io::Error::other)?;
    Ok(fd)
}

/// Whether `fd` is KVM's device: a character device 10:232 that answers
/// `KVM_GET_API_VERSION` with 12. The error says what it is instead.
pub fn check_kvm(fd: &impl AsFd) -> Result<(), String> {
    let file = std::fs::File::from(
        fd.as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("cannot duplicate the descriptor ({e})"))?,
    );
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat the descriptor ({e})"))?;
    let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
    if !meta.file_type().is_char_device() || (major, minor) != (KVM_MAJOR, KVM_MINOR) {
        return Err(format!(
            "it is not KVM's device (a character device {KVM_MAJOR}:{KVM_MINOR}; this is {})",
            if meta.file_type().is_char_device() {
                format!("the character device {major}:{minor}")
            } else {
                "not a character device".to_owned()
            }
        ));
    }
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a number.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if version != KVM_API_VERSION {
        return Err(format!(
            "KVM_GET_API_VERSION answered {version} ({}), not {KVM_API_VERSION}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_kvm_is_named() {
        let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let error = check_kvm(&null).unwrap_err();
        assert!(error.contains("the character device 1:3"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let plain = OwnedFd::from(std::fs::File::create(dir.path().join("kvm")).unwrap());
        let error = check_kvm(&plain).unwrap_err();
        assert!(error.contains("not a character device"), "{error}");
    }
}
