//! POSIX ACLs in their xattr form (`system.posix_acl_access`/`_default`), as far as the mount
//! needs them where owners and modes live in an override xattr (`xattr_permissions=`): the
//! permission bits an ACL stands for, and an ACL brought in line with a mode.
//!
//! The form is a little-endian `u32` version (2), then 8-byte entries: `u16` tag, `u16`
//! permissions (rwx), `u32` id.

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<(u16, u16, u32)>,
}

impl Acl {
    /// Parses an ACL xattr value; None when it is not one (wrong version or size, or no owner,
    /// group or other entry).
    pub fn parse(v: &[u8]) -> Option<Acl> {
        if v.len() < 4 || (v.len() - 4) % 8 != 0 {
            return None;
        }
        if u32::from_le_bytes(v[..4].try_into().ok()?) != VERSION {
            return None;
        }
        let entries: Vec<(u16, u16, u32)> = v[4..]
            .chunks_exact(8)
            .map(|e| {
                (
                    u16::from_le_bytes([e[0], e[1]]),
                    u16::from_le_bytes([e[2], e[3]]),
                    u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                )
            })
            .collect();
        let acl = Acl { entries };
        (acl.perm(USER_OBJ).is_some() && acl.perm(GROUP_OBJ).is_some() && acl.perm(OTHER).is_some())
            .then_some(acl)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + 8 * self.entries.len());
        v.extend_from_slice(&VERSION.to_le_bytes());
        for &(tag, perm, id) in &self.entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    fn perm(&self, tag: u16) -> Option<u32> {
        self.entries.iter().find(|e| e.0 == tag).map(|e| u32::from(e.1 & 7))
    }

    /// The tag that stands for the group bits of the mode: the mask where there is one.
    fn group_tag(&self) -> u16 {
        if self.perm(MASK).is_some() { MASK } else { GROUP_OBJ }
    }

    /// The permission bits (0o777) the ACL stands for, as the kernel sets a mode from it:
    /// owner, mask (or owning group where there is no mask), other.
    pub fn mode_bits(&self) -> u32 {
        let get = |t| self.perm(t).unwrap_or(0);
        (get(USER_OBJ) << 6) | (get(self.group_tag()) << 3) | get(OTHER)
    }

    /// Whether it says no more than a mode does (owner, owning group and other only).
    pub fn is_minimal(&self) -> bool {
        self.entries.iter().all(|e| matches!(e.0, USER_OBJ | GROUP_OBJ | OTHER))
    }

    /// The ACL with its owner, mask (or owning group) and other entries set from `mode`'s
    /// permission bits, as a chmod sets them.
    pub fn with_mode(&self, mode: u32) -> Acl {
        let g = self.group_tag();
        let mut acl = self.clone();
        for e in &mut acl.entries {
            let bits = match e.0 {
                USER_OBJ => mode >> 6,
                t if t == g => mode >> 3,
                OTHER => mode,
                _ => continue,
            };
            e.1 = (bits & 7) as u16;
        }
        acl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        Acl { entries: entries.to_vec() }.to_bytes()
    }

    const U: u16 = 0x02;

    #[test]
    fn parses_and_writes_back() {
        let v = acl(&[
            (USER_OBJ, 6, u32::MAX),
            (U, 6, 65534),
            (GROUP_OBJ, 4, u32::MAX),
            (MASK, 6, u32::MAX),
            (OTHER, 4, u32::MAX),
        ]);
        let a = Acl::parse(&v).unwrap();
        assert_eq!(a.to_bytes(), v);
        assert!(!a.is_minimal());
        // Group bits come from the mask.
        assert_eq!(a.mode_bits(), 0o664);
    }

    #[test]
    fn minimal_acl_is_the_mode() {
        let a = Acl::parse(&acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0), (OTHER, 1, 0)])).unwrap();
        assert!(a.is_minimal());
        assert_eq!(a.mode_bits(), 0o751);
    }

    #[test]
    fn chmod_sets_the_mask_not_the_owning_group() {
        let a =
            Acl::parse(&acl(&[(USER_OBJ, 6, 0), (U, 6, 7), (GROUP_OBJ, 6, 0), (MASK, 6, 0), (OTHER, 4, 0)]))
                .unwrap();
        let b = a.with_mode(0o640);
        assert_eq!(b.mode_bits(), 0o640);
        assert_eq!(b.perm(GROUP_OBJ), Some(6));
        assert_eq!(b.perm(U), Some(6));
        let m = Acl::parse(&acl(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 6, 0), (OTHER, 4, 0)])).unwrap();
        assert_eq!(m.with_mode(0o750).mode_bits(), 0o750);
    }

    #[test]
    fn refuses_what_is_not_an_acl() {
        assert!(Acl::parse(b"").is_none());
        assert!(Acl::parse(&[1, 0, 0, 0]).is_none());
        assert!(Acl::parse(&acl(&[(USER_OBJ, 6, 0)])[..11]).is_none());
        // No other entry.
        assert!(Acl::parse(&acl(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 6, 0)])).is_none());
    }
}
