//! Serving `/dev/fuse`: one thread per CPU, pinned there, each polling its own clone of the
//! device descriptor.
//!
//! fuser's threads block in `read`, and the kernel hands a request to the thread that has
//! waited longest, on whatever CPU it last ran. On a VM whose idle CPUs halt, waking another
//! CPU costs tens of microseconds, and a round trip paid it twice. Here every thread polls its
//! descriptor (`poll` waiters are all woken, unlike blocked readers), so the thread pinned to
//! the requester's CPU is woken too and, as it needs no other CPU to wake, usually takes the
//! request first; the others find nothing to read and go back to waiting. Its reply wakes the
//! requester on that same CPU. The threads follow [`Placement`] as the io_uring queue threads
//! do, so that the woken requester stays on its CPU.
//!
//! The protocol is the one the io_uring queues speak (the same [`answer_in`]), framed as
//! `/dev/fuse` frames it: a request is its `fuse_in_header`, the operation's fixed argument
//! struct and its payload in one read; a reply is its `fuse_out_header` and payload in one
//! write, to the descriptor the request was read from.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::fuse::{Answer, Ctx, Fuse};
use crate::sys;
use crate::uring::{Placement, answer_in, op_name, placement_allowed, rd32, rd64};

const FUSE_FORGET: u32 = 2;
const FUSE_READ: u32 = 15;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_DESTROY: u32 = 38;
const FUSE_BATCH_FORGET: u32 = 42;

/// `struct fuse_in_header`.
const IN_HEADER: usize = 40;

/// A read buffer: the kernel refuses reads into less than room for a WRITE of `max_write`
/// (1 MiB) with its headers.
const BUF: usize = (1 << 20) + 4096;

/// The size of an operation's fixed argument struct, which comes between the header and the
/// payload (names, data) on `/dev/fuse`, as the kernel sends them to a server of protocol 7.31
/// or later that did not ask for `FUSE_SETXATTR_EXT`. 0 for operations whose arguments are
/// names only, and for those layerfs does not implement (answered ENOSYS).
fn op_size(opcode: u32) -> usize {
    match opcode {
        3 => 16,       // GETATTR: fuse_getattr_in
        4 => 88,       // SETATTR: fuse_setattr_in
        8 => 16,       // MKNOD: fuse_mknod_in
        9 => 8,        // MKDIR: fuse_mkdir_in
        12 => 8,       // RENAME: fuse_rename_in
        13 => 8,       // LINK: fuse_link_in
        14 | 27 => 8,  // OPEN, OPENDIR: fuse_open_in
        15 | 16 => 40, // READ: fuse_read_in; WRITE: fuse_write_in
        18 | 29 => 24, // RELEASE, RELEASEDIR: fuse_release_in
        20 | 30 => 16, // FSYNC, FSYNCDIR: fuse_fsync_in
        21 => 8,       // SETXATTR: fuse_setxattr_in without FUSE_SETXATTR_EXT
        22 | 23 => 8,  // GETXATTR, LISTXATTR: fuse_getxattr_in
        25 => 24,      // FLUSH: fuse_flush_in
        28 | 44 => 40, // READDIR, READDIRPLUS: fuse_read_in
        34 => 8,       // ACCESS: fuse_access_in
        35 => 16,      // CREATE: fuse_create_in
        39 => 32,      // IOCTL: fuse_ioctl_in
        51 => 16,      // TMPFILE: fuse_create_in
        43 => 32,      // FALLOCATE: fuse_fallocate_in
        45 => 16,      // RENAME2: fuse_rename2_in
        46 => 24,      // LSEEK: fuse_lseek_in
        47 => 56,      // COPY_FILE_RANGE: fuse_copy_file_range_in
        _ => 0,
    }
}

/// Up to this many CPUs, every server thread polls (see the module doc); each request then
/// wakes one thread per CPU, which on a larger machine costs more than it saves.
pub const POLL_MAX_CPUS: usize = 4;

/// A duplicate of the session's descriptor (made non-blocking with `nonblock`, which holds for
/// the session's own descriptor too: it is the same open file).
fn shared_dev(session: BorrowedFd, nonblock: bool) -> io::Result<OwnedFd> {
    let fd = sys::dup_cloexec(session)?;
    if nonblock {
        sys::set_nonblocking(fd.as_fd(), true)?;
    }
    Ok(fd)
}

/// Serves the session whose descriptor is `session` until it ends (the mount is gone), with
/// `threads` threads (default: one per CPU this process may use, at least two). Where the
/// process may use at most [`POLL_MAX_CPUS`] CPUs, thread `i` is pinned to the `i`-th of them
/// (round robin) and polls; elsewhere the threads block in `read`, unpinned, as fuser's do.
/// They block too beside io_uring queues (`uring`), where what comes through `/dev/fuse` is
/// FORGET, which nobody waits for: woken at every one, polling threads on every CPU slowed
/// `rm -rf` of 20k files through the queues from 0.94-1.12 s to 1.4-1.9 s.
pub fn serve(fuse: &Arc<Fuse>, session: BorrowedFd, threads: Option<usize>, uring: bool) -> io::Result<()> {
    let cpus = sys::allowed_cpus();
    let n = threads.unwrap_or(cpus.len().max(2)).max(1);
    let poll = !uring && cpus.len() <= POLL_MAX_CPUS;
    let placement = (poll && placement_allowed()).then_some(cpus.len());
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        // Where /dev/fuse cannot be opened (only the mount's descriptor was passed in), the
        // threads share that descriptor: one connection, one device, no clones needed.
        let fd = match sys::fuse_dev_clone(session, poll) {
            Ok(fd) => fd,
            Err(e) => {
                if i == 0 {
                    log::info!("/dev/fuse: no clone ({e}): the threads share the mount's descriptor");
                }
                shared_dev(session, poll)?
            }
        };
        let (fuse, cpu) = (fuse.clone(), cpus[i % cpus.len()]);
        let h = std::thread::Builder::new().name(format!("fuse-{i}")).spawn(move || {
            if poll && let Err(e) = sys::pin_to_cpu(cpu) {
                log::debug!("server thread {i}: not pinned to CPU {cpu}: {e}");
            }
            let mut placement = placement.and_then(|c| Placement::new(c, i as u16));
            serve_thread(&fuse, fd.as_fd(), &mut placement, i as u16)
        })?;
        handles.push(h);
    }
    if poll {
        log::info!(
            "/dev/fuse: {n} polling threads, pinned to CPUs {cpus:?}{}",
            if placement.is_some() { ", SCHED_IDLE while CPUs are spare" } else { "" }
        );
    } else {
        log::info!("/dev/fuse: {n} threads");
    }
    let mut res = Ok(());
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => res = res.and(Err(e)),
            Err(_) => res = res.and(Err(io::Error::other("server thread panicked"))),
        }
    }
    res
}

fn serve_thread(fuse: &Fuse, fd: BorrowedFd, placement: &mut Option<Placement>, id: u16) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        // Read first, poll only when nothing is there: a request queued meanwhile costs one
        // system call, not two.
        let n = match sys::read(fd, &mut buf) {
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => {
                    sys::wait_readable(fd);
                    continue;
                }
                // ENOENT: the request was interrupted before it could be read.
                Some(libc::EINTR) | Some(libc::ENOENT) => continue,
                // The connection is gone: unmounted or aborted.
                Some(libc::ENODEV) => return Ok(()),
                _ => return Err(e),
            },
        };
        if n < IN_HEADER {
            log::warn!("/dev/fuse: short request of {n} bytes");
            continue;
        }
        if let Some(p) = placement {
            p.check(id);
        }
        answer(fuse, fd, &mut buf, n);
    }
}

/// Answers the `n`-byte request at the start of `buf`.
fn answer(fuse: &Fuse, fd: BorrowedFd, buf: &mut [u8], n: usize) {
    let mut inh = [0u8; IN_HEADER];
    inh.copy_from_slice(&buf[..IN_HEADER]);
    let (opcode, unique, nodeid) = (rd32(&inh, 4), rd64(&inh, 8), rd64(&inh, 16));
    let ctx = Ctx { uid: rd32(&inh, 24), gid: rd32(&inh, 28), pid: rd32(&inh, 32) };
    // Extension headers (none unless asked for at INIT) come last, in units of 8 bytes.
    let extlen = usize::from(u16::from_ne_bytes([inh[36], inh[37]])) * 8;
    let body = &buf[IN_HEADER..n.saturating_sub(extlen).max(IN_HEADER)];
    match opcode {
        FUSE_FORGET => {
            if body.len() >= 8 {
                log::debug!("FUSE({unique:3}) ino {nodeid:#018x} FORGET (/dev/fuse)");
                fuse.forget(&ctx, nodeid, rd64(body, 0));
            }
            return;
        }
        FUSE_BATCH_FORGET => {
            let count = if body.len() >= 8 { rd32(body, 0) as usize } else { 0 };
            log::debug!("FUSE({unique:3}) BATCH_FORGET of {count} (/dev/fuse)");
            for one in body[8.min(body.len())..].chunks_exact(16).take(count) {
                fuse.forget(&ctx, rd64(one, 0), rd64(one, 8));
            }
            return;
        }
        // Not implemented (as fuser answers it): the kernel then stops sending interrupts.
        FUSE_INTERRUPT => {
            let of = if body.len() >= 8 { rd64(body, 0) } else { 0 };
            log::debug!("FUSE({unique:3}) INTERRUPT of request {of} (/dev/fuse, pid {})", ctx.pid);
            return send(fd, unique, libc::ENOSYS, &[]);
        }
        FUSE_DESTROY => {
            log::debug!("FUSE({unique:3}) DESTROY (/dev/fuse)");
            return send(fd, unique, 0, &[]);
        }
        FUSE_READ if body.len() >= 40 => {
            log::debug!("FUSE({unique:3}) ino {nodeid:#018x} READ (/dev/fuse, pid {})", ctx.pid);
            let (fh, off, size) = (rd64(body, 0), rd64(body, 8), rd32(body, 16));
            // Written from where the data is (a mapping of the file, for a large read).
            fuse.read(&ctx, nodeid, fh, off, size, |a| match a {
                Answer::Data(d) => send(fd, unique, 0, d),
                Answer::Err(e) => send(fd, unique, e, &[]),
                _ => send(fd, unique, libc::EIO, &[]),
            });
            return;
        }
        _ => {}
    }
    let size = match opcode {
        21 if fuse.setxattr_ext.load(std::sync::atomic::Ordering::Relaxed) => 16, // fuse_setxattr_in
        _ => op_size(opcode),
    };
    if body.len() < size {
        log::warn!("/dev/fuse: {} request of {n} bytes is short", op_name(opcode));
        return send(fd, unique, libc::EIO, &[]);
    }
    let mut op = [0u8; 128];
    op[..size].copy_from_slice(&body[..size]);
    let in_len = body.len() - size;
    let payload = &mut buf[IN_HEADER + size..];
    let (error, len) = answer_in(fuse, "/dev/fuse", &inh, &op, payload, in_len);
    send(fd, unique, error, &payload[..len]);
}

/// Writes a reply: its `fuse_out_header` and `data`, in one write.
fn send(fd: BorrowedFd, unique: u64, error: i32, data: &[u8]) {
    let mut oh = [0u8; 16];
    oh[0..4].copy_from_slice(&((16 + data.len()) as u32).to_ne_bytes());
    oh[4..8].copy_from_slice(&(-error).to_ne_bytes());
    oh[8..16].copy_from_slice(&unique.to_ne_bytes());
    let iov = [io::IoSlice::new(&oh), io::IoSlice::new(data)];
    if let Err(e) = sys::writev(fd, &iov[..if data.is_empty() { 1 } else { 2 }]) {
        // ENOENT: the request was interrupted or aborted meanwhile; ENODEV: the mount is gone.
        if !matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODEV)) {
            log::warn!("/dev/fuse: reply to request {unique}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_structs_have_the_kernel_sizes() {
        assert_eq!(op_size(1), 0); // LOOKUP: a name only
        assert_eq!(op_size(4), 88);
        assert_eq!(op_size(16), 40);
        assert_eq!(op_size(44), 40);
        assert_eq!(op_size(47), 56);
        assert_eq!(op_size(10), 0); // UNLINK
    }
}
