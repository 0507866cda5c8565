//! Extended attributes from PAX `SCHILY.xattr.*` records, turned into ext4's stored form.
//!
//! ext4 stores a name as a namespace index plus the rest of the name. POSIX ACLs
//! (`system.posix_acl_access`, `system.posix_acl_default`) arrive in the VFS form that
//! `getxattr(2)` returns (version 2, 8-byte entries) and are stored in ext4's own compact form
//! (version 1, 4-byte entries for the owner, group, mask and other, 8-byte ones for named users
//! and groups), as the kernel and `mke2fs -d` do. Other `system.` attributes (`system.data`
//! is ext4's inline data, `system.nfs4_acl` belongs to NFS) and unknown namespaces are refused
//! rather than dropped, so what the image holds is exactly what the layer said.

use super::error::{Refusal, escape_bytes};
use super::ext4::format::{Xattr, place_xattrs};

const INDEX_USER: u8 = 1;
const INDEX_POSIX_ACL_ACCESS: u8 = 2;
const INDEX_POSIX_ACL_DEFAULT: u8 = 3;
const INDEX_TRUSTED: u8 = 4;
const INDEX_SECURITY: u8 = 6;

const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;

/// Converts one entry's xattrs (a later record for the same name wins, as in PAX), sorted by
/// (index, name), and checks that they fit in the inode plus one block.
pub(crate) fn convert_xattrs(records: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<Xattr>, Refusal> {
    let mut xattrs: Vec<Xattr> = Vec::with_capacity(records.len());
    for (name, value) in records {
        let xattr = convert_one(name, value)?;
        xattrs.retain(|x| (x.index, &x.name) != (xattr.index, &xattr.name));
        xattrs.push(xattr);
    }
    xattrs.sort();
    if place_xattrs(&xattrs).is_none() {
        return Err(Refusal::XattrsTooLarge);
    }
    Ok(xattrs)
}

fn convert_one(name: &[u8], value: &[u8]) -> Result<Xattr, Refusal> {
    let shown = escape_bytes(name);
    let invalid = |detail: &str| Refusal::XattrInvalid {
        name: shown.clone(),
        detail: detail.to_string(),
    };
    if name.contains(&0) {
        return Err(invalid("the name contains a NUL byte"));
    }
    let (index, suffix, value) = match name {
        b"system.posix_acl_access" => (
            INDEX_POSIX_ACL_ACCESS,
            &b""[..],
            acl_to_disk(value).ok_or_else(|| invalid("not a valid POSIX ACL"))?,
        ),
        b"system.posix_acl_default" => (
            INDEX_POSIX_ACL_DEFAULT,
            &b""[..],
            acl_to_disk(value).ok_or_else(|| invalid("not a valid POSIX ACL"))?,
        ),
        _ => {
            let (index, suffix) = if let Some(rest) = name.strip_prefix(b"user.") {
                (INDEX_USER, rest)
            } else if let Some(rest) = name.strip_prefix(b"trusted.") {
                (INDEX_TRUSTED, rest)
            } else if let Some(rest) = name.strip_prefix(b"security.") {
                (INDEX_SECURITY, rest)
            } else {
                return Err(Refusal::XattrNamespace { name: shown });
            };
            if suffix.is_empty() {
                return Err(invalid("the name is only a namespace"));
            }
            (index, suffix, value.to_vec())
        }
    };
    if suffix.len() > 255 {
        return Err(invalid("the name is longer than 255 bytes"));
    }
    Ok(Xattr {
        index,
        name: suffix.to_vec(),
        value,
    })
}

/// The VFS ACL form (`posix_acl_xattr_header` version 2 + 8-byte entries) to ext4's
/// (`ext4_acl_header` version 1 + short or long entries). `None` if malformed.
fn acl_to_disk(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() < 4 || !(value.len() - 4).is_multiple_of(8) {
        return None;
    }
    if u32::from_le_bytes(value[..4].try_into().ok()?) != 2 {
        return None;
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for entry in value[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let perm = u16::from_le_bytes([entry[2], entry[3]]);
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        match tag {
            ACL_USER_OBJ | ACL_GROUP_OBJ | ACL_MASK | ACL_OTHER => {}
            ACL_USER | ACL_GROUP => out.extend_from_slice(&entry[4..8]),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_map_to_indexes() {
        let x = convert_xattrs(&[
            (b"user.b".to_vec(), b"2".to_vec()),
            (b"security.capability".to_vec(), vec![1, 2]),
            (b"user.b".to_vec(), b"3".to_vec()),
        ])
        .unwrap();
        assert_eq!(x.len(), 2);
        assert_eq!(
            (x[0].index, &x[0].name[..], &x[0].value[..]),
            (1, &b"b"[..], &b"3"[..])
        );
        assert_eq!((x[1].index, &x[1].name[..]), (6, &b"capability"[..]));
        assert!(matches!(
            convert_xattrs(&[(b"system.data".to_vec(), vec![])]),
            Err(Refusal::XattrNamespace { .. })
        ));
    }

    #[test]
    fn acls_are_compacted() {
        let mut vfs = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 4, 1000),
            (4, 4, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            vfs.extend_from_slice(&tag.to_le_bytes());
            vfs.extend_from_slice(&perm.to_le_bytes());
            vfs.extend_from_slice(&id.to_le_bytes());
        }
        let disk = acl_to_disk(&vfs).unwrap();
        assert_eq!(disk.len(), 4 + 4 + 8 + 4 + 4 + 4);
        assert_eq!(&disk[..4], &1u32.to_le_bytes());
        assert!(acl_to_disk(&vfs[..7]).is_none());
    }
}
