//! Whiteout and opaque-directory classification, and the overlay-private xattr names.
//!
//! Three whiteout forms are read, in every layer:
//! 1. a character device with device number 0/0 (kernel overlayfs, fuse-overlayfs as root);
//! 2. a `.wh.NAME` entry (OCI/AUFS tar form; fuse-overlayfs rootless);
//! 3. a zero-size regular file with `trusted.overlay.whiteout` or `user.overlay.whiteout`
//!    (kernel 6.7+), honoured in directories marked `overlay.opaque=x`, as the kernel does.
//!
//! A directory is opaque with `trusted.overlay.opaque=y`, `user.overlay.opaque=y`,
//! `user.fuseoverlayfs.opaque=y`, or a `.wh..wh..opq` entry inside it. The value `x` means "not
//! opaque, but holds xattr whiteouts".

use crate::name;

pub const TRUSTED_OPAQUE: &[u8] = b"trusted.overlay.opaque";
pub const USER_OPAQUE: &[u8] = b"user.overlay.opaque";
pub const FUSEOVL_OPAQUE: &[u8] = b"user.fuseoverlayfs.opaque";
pub const OPAQUE_XATTRS: [&[u8]; 3] = [TRUSTED_OPAQUE, USER_OPAQUE, FUSEOVL_OPAQUE];
pub const TRUSTED_WHITEOUT: &[u8] = b"trusted.overlay.whiteout";
pub const TRUSTED_IMPURE: &std::ffi::CStr = c"trusted.overlay.impure";
pub const USER_IMPURE: &std::ffi::CStr = c"user.overlay.impure";
pub const IMPURE_XATTRS: [&[u8]; 2] = [TRUSTED_IMPURE.to_bytes(), USER_IMPURE.to_bytes()];
pub const TRUSTED_ORIGIN: &std::ffi::CStr = c"trusted.overlay.origin";
pub const USER_ORIGIN: &std::ffi::CStr = c"user.overlay.origin";
pub const USER_WHITEOUT: &[u8] = b"user.overlay.whiteout";

/// Prefixes of xattrs that belong to an overlay implementation: hidden from listxattr, refused
/// by get/set/remove through the mount, and never copied up.
pub const PRIVATE_PREFIXES: [&[u8]; 3] = [b"trusted.overlay.", b"user.overlay.", b"user.fuseoverlayfs."];

pub fn is_private_xattr(name: &[u8]) -> bool {
    PRIVATE_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// What an opaque xattr's value says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpaqueValue {
    /// `y`: the directory hides everything below it.
    Opaque,
    /// `x`: not opaque, but may hold xattr whiteouts (kernel 6.7).
    XattrWhiteouts,
    /// Anything else.
    None,
}

pub fn opaque_value(v: &[u8]) -> OpaqueValue {
    match v {
        b"y" => OpaqueValue::Opaque,
        b"x" => OpaqueValue::XattrWhiteouts,
        _ => OpaqueValue::None,
    }
}

/// True for a character device 0/0.
pub fn is_chardev_whiteout(mode: u32, rdev: u64) -> bool {
    (mode & libc::S_IFMT) == libc::S_IFCHR && rdev == 0
}

/// How one directory entry of a layer listing is to be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryClass<'a> {
    /// A normal entry (it may still turn out to be a 0/0 char device: see `may_be_whiteout`).
    Plain,
    /// `.wh.X`: hides X in the layers below.
    Whiteout(&'a [u8]),
    /// `.wh..wh..opq`: the directory is opaque.
    OpaqueMarker,
    /// Some other `.wh.` name (a bare `.wh.`): never shown, ignored.
    Reserved,
}

/// Classifies a listing entry by its name.
pub fn classify(name: &[u8]) -> EntryClass<'_> {
    if name == name::OPAQUE_MARKER {
        return EntryClass::OpaqueMarker;
    }
    if let Some(t) = name::whiteout_target(name) {
        return EntryClass::Whiteout(t);
    }
    if name::is_reserved(name) {
        return EntryClass::Reserved;
    }
    EntryClass::Plain
}

/// Which whiteout form a mount writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutStyle {
    /// Character device 0/0 (needs mknod permission; unprivileged since Linux 5.8).
    CharDev,
    /// `.wh.NAME` empty files.
    WhFile,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_entries() {
        assert_eq!(classify(b"a"), EntryClass::Plain);
        assert_eq!(classify(b".wh.a"), EntryClass::Whiteout(b"a"));
        assert_eq!(classify(b".wh..wh..opq"), EntryClass::OpaqueMarker);
        assert_eq!(classify(b".wh."), EntryClass::Reserved);
    }

    #[test]
    fn private_xattrs() {
        assert!(is_private_xattr(b"trusted.overlay.opaque"));
        assert!(is_private_xattr(b"user.overlay.whiteout"));
        assert!(is_private_xattr(b"user.fuseoverlayfs.origin"));
        assert!(!is_private_xattr(b"user.foo"));
        assert!(!is_private_xattr(b"trusted.overlayx"));
        assert!(!is_private_xattr(b"security.selinux"));
    }

    #[test]
    fn chardev_whiteout() {
        assert!(is_chardev_whiteout(libc::S_IFCHR | 0o644, 0));
        assert!(!is_chardev_whiteout(libc::S_IFCHR | 0o644, crate::sys::makedev(1, 3)));
        assert!(!is_chardev_whiteout(libc::S_IFREG, 0));
        assert_eq!(opaque_value(b"y"), OpaqueValue::Opaque);
        assert_eq!(opaque_value(b"x"), OpaqueValue::XattrWhiteouts);
        assert_eq!(opaque_value(b"n"), OpaqueValue::None);
    }
}
