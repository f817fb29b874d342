//! Compact entries for lower files the kernel only looked up.
//!
//! Most names a container's processes touch are files of the image, looked up (LOOKUP,
//! READDIRPLUS) and stat'ed from the kernel's attribute cache, never written. For those the
//! node table keeps a [`Lite`] entry in place of a [`Node`]: the parent, the name (inline when
//! short), the layer and the kernel's lookup count, 32 bytes in the table and no allocation of
//! their own, where a full node costs about 250. Anything beyond a lookup, a stat or a forget
//! (open, readlink, xattrs, a change, a rename) promotes the entry to a full node first; the
//! node id and the lookup count carry over, so the kernel sees no difference.
//!
//! A lite entry stands for exactly the node state a lookup resolved: a non-directory found in
//! lower layer `layer` of its parent, nothing above it. The lower directory is the parent's
//! directory in that layer; lower directories never move, so it is found again when needed.

use super::dirfd::DirFd;
use std::ffi::CStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fuser::FileType;

use super::{Attr, Node, NodeState, OverlayFs, arc_cname};
use crate::error::{Error, Result};
use crate::layer::Loc;

/// A name in 16 bytes: up to [`ShortName::INLINE`] bytes in place, a longer one behind a thin
/// pointer to its length byte and its bytes (one allocation, no separate length word).
pub(crate) enum ShortName {
    Inline(u8, [u8; ShortName::INLINE]),
    Heap(std::ptr::NonNull<u8>),
}

// SAFETY: `Heap` owns its allocation exclusively (like a `Box<[u8]>`) and never mutates it.
unsafe impl Send for ShortName {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for ShortName {}

impl ShortName {
    pub(crate) const INLINE: usize = 14;

    /// `name` is at most 255 bytes long (NAME_MAX); longer names are cut there.
    pub(crate) fn new(name: &[u8]) -> ShortName {
        if name.len() <= Self::INLINE {
            let mut buf = [0u8; Self::INLINE];
            buf[..name.len()].copy_from_slice(name);
            return ShortName::Inline(name.len() as u8, buf);
        }
        let name = &name[..name.len().min(255)];
        let mut v = Vec::with_capacity(name.len() + 1);
        v.push(name.len() as u8);
        v.extend_from_slice(name);
        let b: Box<[u8]> = v.into_boxed_slice();
        // SAFETY: a Box pointer is never null.
        ShortName::Heap(unsafe { std::ptr::NonNull::new_unchecked(Box::into_raw(b).cast::<u8>()) })
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            ShortName::Inline(len, buf) => &buf[..*len as usize],
            // SAFETY: `p` points to a live allocation of 1 + len bytes made in `new`, whose first
            // byte is len; it lives as long as `self`.
            ShortName::Heap(p) => unsafe {
                let len = *p.as_ptr() as usize;
                std::slice::from_raw_parts(p.as_ptr().add(1), len)
            },
        }
    }
}

impl Drop for ShortName {
    fn drop(&mut self) {
        if let ShortName::Heap(p) = self {
            // SAFETY: rebuilds the `Box<[u8]>` of 1 + len bytes made in `new`, exactly once.
            unsafe {
                let len = *p.as_ptr() as usize + 1;
                drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(p.as_ptr(), len)));
            }
        }
    }
}

/// A lower non-directory the kernel holds and nothing has used beyond lookups and stats.
pub(crate) struct Lite {
    pub parent: Arc<Node>,
    pub name: ShortName,
    /// The kernel's references. An entry that would pass `u32::MAX` is promoted first.
    pub lookups: u32,
    pub layer: u16,
    pub kind: FileType,
}

/// One entry of the node table.
pub(crate) enum Slot {
    Full(Arc<Node>),
    Lite(Lite),
}

/// A table entry, copied out of the table.
enum Entry {
    Full(Arc<Node>),
    Lite { parent: Arc<Node>, name: Arc<CStr>, layer: u16, kind: FileType },
}

/// The layer and lower directory of a resolution a lite entry can stand for: a non-directory
/// of a lower layer, with no upper object.
pub(crate) fn lite_layer(s: &NodeState) -> Option<(u16, DirFd)> {
    if s.kind == FileType::Directory || s.upper.is_some() || s.unlinked || !s.lower_dirs.is_empty() {
        return None;
    }
    let (li, fd) = s.lower.as_ref()?;
    Some((u16::try_from(*li).ok()?, fd.clone()))
}

impl OverlayFs {
    /// Takes a kernel reference on lower non-directory `id` (child `name` of `parent`, in
    /// `layer`) as a lite entry. False when a full node has that id (or the count is full):
    /// then the caller installs a node as usual.
    pub(crate) fn add_lite(
        &self,
        id: u64,
        parent: &Arc<Node>,
        name: &[u8],
        layer: u16,
        kind: FileType,
    ) -> bool {
        if name.len() > crate::name::NAME_MAX {
            return false;
        }
        let mut nodes = self.nodes.write(id);
        match nodes.get_mut(&id) {
            Some(Slot::Full(_)) => false,
            Some(Slot::Lite(l)) => {
                if l.lookups == u32::MAX {
                    return false;
                }
                l.lookups += 1;
                if !Arc::ptr_eq(&l.parent, parent) {
                    l.parent = parent.clone();
                }
                if l.name.as_bytes() != name {
                    l.name = ShortName::new(name);
                }
                l.layer = layer;
                l.kind = kind;
                true
            }
            None => {
                let lite =
                    Lite { parent: parent.clone(), name: ShortName::new(name), lookups: 1, layer, kind };
                nodes.insert(id, Slot::Lite(lite));
                true
            }
        }
    }

    /// The directory of a lite entry's lower object: the parent's, in that layer.
    fn lite_dir(&self, parent: &Node, layer: u16) -> Result<DirFd> {
        let s = parent.state.lock();
        let ld = s.lower_dirs.iter().find(|d| d.layer == usize::from(layer));
        ld.map(|d| d.fd.clone()).ok_or(Error::new(libc::ESTALE, "lower directory gone"))
    }

    /// Entry `id`: its node, or what a lite entry needs for a stat or a promotion (read under
    /// the table's read lock).
    fn entry(&self, id: u64) -> Result<Entry> {
        match self.nodes.read(id).get(&id) {
            Some(Slot::Full(n)) => Ok(Entry::Full(n.clone())),
            Some(Slot::Lite(l)) => Ok(Entry::Lite {
                parent: l.parent.clone(),
                name: arc_cname(l.name.as_bytes())?,
                layer: l.layer,
                kind: l.kind,
            }),
            None => Err(Error::new(libc::ESTALE, "unknown inode")),
        }
    }

    /// The node with id `id`, a lite entry promoted to a full node first.
    pub(crate) fn node(&self, id: u64) -> Result<Arc<Node>> {
        let (parent, name, layer, kind) = match self.entry(id)? {
            Entry::Full(n) => return Ok(n),
            Entry::Lite { parent, name, layer, kind } => (parent, name, layer, kind),
        };
        let fd = self.lite_dir(&parent, layer)?;
        let mut state = NodeState::non_dir(name, kind, None, Some((usize::from(layer), fd)));
        state.parent = Some(parent);
        let mut nodes = self.nodes.write(id);
        match nodes.get(&id) {
            Some(Slot::Full(n)) => Ok(n.clone()),
            None => Err(Error::new(libc::ESTALE, "unknown inode")),
            Some(Slot::Lite(l)) => {
                let n = Node::new(id, u64::from(l.lookups), state);
                let old = nodes.insert(id, Slot::Full(n.clone()));
                drop(nodes);
                drop(old);
                Ok(n)
            }
        }
    }

    /// Whether node `id` is held by the kernel (as a full node or a lite entry).
    pub fn holds(&self, id: u64) -> bool {
        self.nodes.read(id).contains_key(&id)
    }

    /// Whether node `id` has an upper object (was copied up or made there); a lite entry, a
    /// lower file only looked up, has none.
    pub fn has_upper(&self, id: u64) -> bool {
        match self.nodes.read(id).get(&id) {
            Some(Slot::Full(n)) => n.has_upper.load(Ordering::Acquire),
            _ => false,
        }
    }

    /// The attributes of node `id`, a lite entry stat'ed without promoting it.
    pub fn getattr(&self, id: u64) -> Result<Attr> {
        match self.entry(id)? {
            Entry::Full(node) => self.node_attr(&node),
            Entry::Lite { parent, name, layer, .. } => {
                let loc = Loc::At(self.lite_dir(&parent, layer)?, name);
                let st = self.stat_eff(&loc, usize::from(layer)).map_err(|e| Error::io(e, "stat"))?;
                Ok(self.attr_from_stat(id, usize::from(layer), &st, false))
            }
        }
    }

    /// Number of table entries that are lite (for tests and statistics).
    pub fn lite_count(&self) -> usize {
        self.nodes.count(|s| matches!(s, Slot::Lite(_)))
    }

    /// The full node `id`, if that is what the table holds (a lite entry stays lite).
    pub(crate) fn full_node(&self, id: u64) -> Option<Arc<Node>> {
        match self.nodes.read(id).get(&id)? {
            Slot::Full(n) => Some(n.clone()),
            Slot::Lite(_) => None,
        }
    }

    /// Where entry `id`'s data lives (for reading it ahead), without promoting a lite entry.
    pub(crate) fn data_loc(&self, id: u64) -> Option<Loc> {
        match self.entry(id).ok()? {
            Entry::Full(n) => n.top().map(|t| t.loc.clone()),
            Entry::Lite { parent, name, layer, .. } => {
                Some(Loc::At(self.lite_dir(&parent, layer).ok()?, name))
            }
        }
    }

    /// For [`OverlayFs::path_of`]: the parent and name of entry `id`.
    pub(crate) fn parent_and_name(&self, id: u64) -> Option<(Option<Arc<Node>>, Vec<u8>)> {
        // The table's lock is let go before a node's (the lock order: state, then table).
        match self.entry(id).ok()? {
            Entry::Full(n) => {
                let s = n.state.lock();
                Some((s.parent.clone(), s.name.to_bytes().to_vec()))
            }
            Entry::Lite { parent, name, .. } => Some((Some(parent), name.to_bytes().to_vec())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_round_trip_at_every_length() {
        for len in 0..=255usize {
            let name: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let s = ShortName::new(&name);
            assert_eq!(s.as_bytes(), &name[..]);
            assert_eq!(matches!(s, ShortName::Inline(..)), len <= ShortName::INLINE);
            let t = ShortName::new(s.as_bytes());
            drop(s);
            assert_eq!(t.as_bytes(), &name[..], "a copy outlives its source");
        }
    }

    #[test]
    fn entries_stay_small() {
        // The point of lite entries: the table slot is all the memory they take.
        assert_eq!(std::mem::size_of::<ShortName>(), 16);
        assert_eq!(std::mem::size_of::<Slot>(), 32);
    }
}
