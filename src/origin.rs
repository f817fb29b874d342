//! The `overlay.origin` xattr: which lower object an upper one was copied up from, in kernel
//! overlayfs's own format, so that a copied-up file keeps the lower file's inode number after
//! a remount (on layerfs, and on kernel overlayfs over the same directories), and an upper
//! directory written by the kernel is read the same way.
//!
//! The value is the kernel's `struct ovl_fb`, packed, little-endian host:
//!
//! | byte  | field                                                       |
//! |-------|-------------------------------------------------------------|
//! | 0     | version, 0                                                  |
//! | 1     | magic, 0xfb                                                 |
//! | 2     | length of the whole value                                   |
//! | 3     | flags: 1 big-endian, 2 any endianness, 4 names an upper object |
//! | 4     | the file handle's type (`name_to_handle_at`)                |
//! | 5-20  | the UUID of the lower object's filesystem                   |
//! | 21-   | the file handle                                             |
//!
//! An empty value says "copied up, origin not recorded": what the kernel writes where it may
//! not decode file handles (a mount inside a user namespace) or the lower filesystem has
//! none. The kernel writes an origin on a copy-up of a directory or of a non-directory linked
//! once in its layer, and marks the upper parent `overlay.impure`; only in such directories
//! does it look for origins when it lists them.

/// Bytes before the file handle.
pub const HEADER: usize = 21;
const VERSION: u8 = 0;
const MAGIC: u8 = 0xfb;
const FLAG_BIG_ENDIAN: u8 = 1;
const FLAG_ANY_ENDIAN: u8 = 2;
const FLAG_PATH_UPPER: u8 = 4;
const FLAGS_ALL: u8 = FLAG_BIG_ENDIAN | FLAG_ANY_ENDIAN | FLAG_PATH_UPPER;
const FLAG_CPU_ENDIAN: u8 = if cfg!(target_endian = "big") { FLAG_BIG_ENDIAN } else { 0 };

/// A decoded origin: the lower object's filesystem and file handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub uuid: [u8; 16],
    pub handle_type: i32,
    pub handle: Vec<u8>,
}

/// The xattr value for a lower object with file handle `handle` of type `handle_type` on a
/// filesystem with `uuid`; None when the kernel's format cannot hold it.
pub fn encode(uuid: &[u8; 16], handle_type: i32, handle: &[u8]) -> Option<Vec<u8>> {
    let ty = u8::try_from(handle_type).ok()?;
    let len = u8::try_from(HEADER + handle.len()).ok()?;
    if handle.is_empty() || handle.len() % 4 != 0 {
        return None;
    }
    let mut v = Vec::with_capacity(usize::from(len));
    v.extend_from_slice(&[VERSION, MAGIC, len, FLAG_CPU_ENDIAN, ty]);
    v.extend_from_slice(uuid);
    v.extend_from_slice(handle);
    Some(v)
}

/// Reads an origin value. None for an empty one, one in another format (fuse-overlayfs 1.x
/// wrote a path under the same name), one of the other endianness, or one naming an upper
/// object.
pub fn decode(v: &[u8]) -> Option<Origin> {
    if v.len() <= HEADER || v[0] != VERSION || v[1] != MAGIC || usize::from(v[2]) != v.len() {
        return None;
    }
    let flags = v[3];
    if flags & !FLAGS_ALL != 0 || flags & FLAG_PATH_UPPER != 0 {
        return None;
    }
    if flags & FLAG_ANY_ENDIAN == 0 && flags & FLAG_BIG_ENDIAN != FLAG_CPU_ENDIAN {
        return None;
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&v[5..HEADER]);
    Some(Origin { uuid, handle_type: i32::from(v[4]), handle: v[HEADER..].to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What kernel 6.18 wrote on a copy-up of an ext4 file (inode 10895355, generation
    /// 27917198) from a filesystem with a null UUID.
    const KERNEL: [u8; 29] = [
        0x00, 0xfb, 0x1d, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfb, 0x3f, 0xa6, 0x00,
        0x8e, 0xfb, 0xa9, 0x01,
    ];

    #[test]
    fn reads_and_writes_the_kernels_format() {
        let o = decode(&KERNEL).unwrap();
        assert_eq!(o.uuid, [0; 16]);
        assert_eq!(o.handle_type, 1);
        assert_eq!(u32::from_le_bytes(o.handle[..4].try_into().unwrap()), 10895355);
        assert_eq!(u32::from_le_bytes(o.handle[4..].try_into().unwrap()), 27917198);
        assert_eq!(encode(&o.uuid, o.handle_type, &o.handle).unwrap(), KERNEL);
        let uuid: [u8; 16] = std::array::from_fn(|i| i as u8 + 1);
        let v = encode(&uuid, 0x81, &[9; 20]).unwrap();
        assert_eq!(v.len(), HEADER + 20);
        assert_eq!(decode(&v), Some(Origin { uuid, handle_type: 0x81, handle: vec![9; 20] }));
    }

    #[test]
    fn refuses_what_is_not_an_origin() {
        assert_eq!(decode(b""), None, "the kernel's 'not recorded'");
        assert_eq!(decode(b"/usr/bin/ls\0"), None, "fuse-overlayfs 1.x's path");
        assert_eq!(decode(&KERNEL[..HEADER]), None, "no handle");
        let mut short = KERNEL;
        short[2] = 28;
        assert_eq!(decode(&short), None, "length that is not the value's");
        let mut magic = KERNEL;
        magic[1] = 0xfa;
        assert_eq!(decode(&magic), None);
        let mut version = KERNEL;
        version[0] = 1;
        assert_eq!(decode(&version), None);
        let mut upper = KERNEL;
        upper[3] = FLAG_PATH_UPPER;
        assert_eq!(decode(&upper), None, "an index's upper handle");
        let mut unknown = KERNEL;
        unknown[3] = 8;
        assert_eq!(decode(&unknown), None);
        let mut other = KERNEL;
        other[3] = FLAG_BIG_ENDIAN ^ FLAG_CPU_ENDIAN;
        assert_eq!(decode(&other), None, "the other endianness");
        let mut any = other;
        any[3] |= FLAG_ANY_ENDIAN;
        assert!(decode(&any).is_some());
        assert_eq!(encode(&[0; 16], 256, &[0; 8]), None);
        assert_eq!(encode(&[0; 16], -1, &[0; 8]), None);
        assert_eq!(encode(&[0; 16], 1, &[0; 6]), None);
        assert_eq!(encode(&[0; 16], 1, &[0; 240]), None);
    }
}
