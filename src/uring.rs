//! FUSE over io_uring (kernel 6.14+, where the fuse module's `enable_uring` parameter is on).
//!
//! With `/dev/fuse`, a request wakes whichever server thread waits in `read`, on whatever CPU
//! it last ran; on a VM whose idle CPUs halt, each wake-up of another CPU costs tens of
//! microseconds, twice per round trip, and a lookup that takes 13 µs on one CPU takes 80 µs
//! across two. Over io_uring the kernel keeps a queue per CPU and hands each request to the
//! queue of the CPU it was made on; the threads serving a queue are pinned to that CPU, so a
//! request is answered where it was asked.
//!
//! Each queue has [`PER_QUEUE`] threads, each with its own ring and one registered entry (a
//! header buffer and a payload buffer): a thread blocked in a slow operation (a copy-up) holds
//! only its own entry, and the CPU's other requests go to the others. The `/dev/fuse` threads
//! ([`crate::devloop`]) stay: they answer the requests made before every queue is registered,
//! and FORGET and INTERRUPT, which the kernel still sends there.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use fuser::{FileAttr, FileType};
use io_uring::{IoUring, cqueue, opcode, squeue, types};

use crate::fs::{Caller, SetAttr};
use crate::fuse::{Answer, Ctx, DirOut, DirPlusOut, Fuse, SetattrIn};
use crate::sys::SetTime;

/// Threads (each with one ring entry) per CPU queue.
pub const PER_QUEUE: usize = 4;

/// The payload buffer of an entry: the kernel requires room for the largest request or reply
/// data, here 1 MiB (`max_write`, and `max_pages` of 4 KiB pages).
const PAYLOAD: usize = 1 << 20;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_SETATTR: u32 = 4;
const FUSE_READLINK: u32 = 5;
const FUSE_SYMLINK: u32 = 6;
const FUSE_MKNOD: u32 = 8;
const FUSE_MKDIR: u32 = 9;
const FUSE_UNLINK: u32 = 10;
const FUSE_RMDIR: u32 = 11;
const FUSE_RENAME: u32 = 12;
const FUSE_LINK: u32 = 13;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_STATFS: u32 = 17;
const FUSE_RELEASE: u32 = 18;
const FUSE_FSYNC: u32 = 20;
const FUSE_SETXATTR: u32 = 21;
/// `fuse_setxattr_in.setxattr_flags`: clear setgid when setting `system.posix_acl_access`.
const FUSE_SETXATTR_ACL_KILL_SGID: u32 = 1;
const FUSE_GETXATTR: u32 = 22;
const FUSE_LISTXATTR: u32 = 23;
const FUSE_REMOVEXATTR: u32 = 24;
const FUSE_FLUSH: u32 = 25;
const FUSE_OPENDIR: u32 = 27;
const FUSE_READDIR: u32 = 28;
const FUSE_RELEASEDIR: u32 = 29;
const FUSE_FSYNCDIR: u32 = 30;
const FUSE_ACCESS: u32 = 34;
const FUSE_CREATE: u32 = 35;
const FUSE_IOCTL: u32 = 39;
const FUSE_TMPFILE: u32 = 51;
const FUSE_FALLOCATE: u32 = 43;
const FUSE_READDIRPLUS: u32 = 44;
const FUSE_RENAME2: u32 = 45;
const FUSE_LSEEK: u32 = 46;
const FUSE_COPY_FILE_RANGE: u32 = 47;

const FATTR_MODE: u32 = 1 << 0;
const FATTR_UID: u32 = 1 << 1;
const FATTR_GID: u32 = 1 << 2;
const FATTR_SIZE: u32 = 1 << 3;
const FATTR_ATIME: u32 = 1 << 4;
const FATTR_MTIME: u32 = 1 << 5;
const FATTR_FH: u32 = 1 << 6;
const FATTR_ATIME_NOW: u32 = 1 << 7;
const FATTR_MTIME_NOW: u32 = 1 << 8;
const FATTR_CTIME: u32 = 1 << 10;
const FUSE_GETATTR_FH: u32 = 1;
const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;
const FUSE_FSYNC_FDATASYNC: u32 = 1;

/// Who may use the mount, as fuser checks it on `/dev/fuse` (`allow_root`, or neither
/// `allow_root` nor `allow_other`, of a mount made by a user).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    All,
    RootAndOwner(u32),
    Owner(u32),
}

/// The header buffer of a ring entry (`struct fuse_uring_req_header`): the request's
/// `fuse_in_header` (the reply's `fuse_out_header`), the operation's fixed argument struct, and
/// the entry's `fuse_uring_ent_in_out`.
#[repr(C, align(8))]
struct Header {
    in_out: [u8; 128],
    op_in: [u8; 128],
    ent: [u8; 32],
}

/// Starts the queue threads and waits until each has registered its entry. The kernel holds
/// every request back until all queues have entries (and FUSE_OVER_IO_URING was agreed at
/// INIT, so there is no going back): an error here leaves a mount that cannot answer.
pub fn start(fuse: &Arc<Fuse>) -> Result<(), String> {
    let dev = fuse.dev.get().cloned().ok_or("no /dev/fuse descriptor")?;
    // The kernel keeps a queue per possible CPU; one that is offline now gets a single entry.
    let online = crate::sys::cpu_list("online");
    let queues = crate::sys::cpu_list("possible").into_iter().max().map_or(1, |m| m + 1);
    // SCHED_IDLE only where the queue threads can leave it again (see Placement).
    let cpus = online.len().max(1);
    let placement = placement_allowed().then_some(cpus);
    // The CPUs this process may use, before any queue thread is pinned.
    let allowed = crate::sys::allowed_cpus();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut threads = 0;
    for qid in 0..queues {
        let n = if online.contains(&qid) { PER_QUEUE } else { 1 };
        for i in 0..n {
            let (fuse, dev, tx) = (fuse.clone(), dev.clone(), tx.clone());
            let others: Vec<usize> = allowed.iter().copied().filter(|&c| c != qid).collect();
            std::thread::Builder::new()
                .name(format!("uring-{qid}-{i}"))
                .spawn(move || {
                    if let Err(e) = serve(&fuse, &dev, qid as u16, &others, placement, &tx) {
                        log::warn!("io_uring queue {qid}: {e}");
                        let _ = tx.send(Err(format!("queue {qid}: {e}")));
                    }
                })
                .map_err(|e| format!("thread: {e}"))?;
            threads += 1;
        }
    }
    for _ in 0..threads {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("queues not registered within 10 s".into()),
        }
    }
    log::info!(
        "FUSE over io_uring: {queues} queues, {PER_QUEUE} entries per online CPU{}",
        if placement.is_some() { ", SCHED_IDLE while CPUs are spare" } else { "" }
    );
    Ok(())
}

pub(crate) fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes(b[o..o + 4].try_into().unwrap())
}
pub(crate) fn rd64(b: &[u8], o: usize) -> u64 {
    u64::from_ne_bytes(b[o..o + 8].try_into().unwrap())
}

/// One thread's ring with its single entry: registers it (and says so on `registered`),
/// then answers the requests the kernel puts into it until the connection ends. With
/// `placement` (the number of online CPUs), the thread's policy follows [`Placement`].
/// `others`: the CPUs other than the queue's that the process may use (see [`MOVE_MIN`]).
fn serve(
    fuse: &Fuse,
    dev: &Arc<OwnedFd>,
    qid: u16,
    others: &[usize],
    placement: Option<usize>,
    registered: &Sender<Result<(), String>>,
) -> io::Result<()> {
    if let Err(e) = crate::sys::pin_to_cpu(qid as usize) {
        log::debug!("io_uring queue {qid}: not pinned: {e}");
    }
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = IoUring::builder().build(4)?;
    let mut hdr = Box::new(Header { in_out: [0; 128], op_in: [0; 128], ent: [0; 32] });
    let mut payload = crate::sys::PayloadBuf::new(PAYLOAD)?;
    let iov = Box::new([
        libc::iovec { iov_base: (&mut *hdr as *mut Header).cast(), iov_len: std::mem::size_of::<Header>() },
        libc::iovec { iov_base: payload.as_ptr().cast(), iov_len: PAYLOAD },
    ]);
    let fd = dev.as_raw_fd();
    let sqe = |cmd_op: u32, commit_id: u64| -> squeue::Entry128 {
        // struct fuse_uring_cmd_req: flags, commit_id, qid
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
        let e =
            opcode::UringCmd80::new(types::Fd(fd), cmd_op).cmd(cmd).addr(Some(iov.as_ptr() as u64)).build();
        with_iovec_count(e, 2)
    };
    // REGISTER completes when a request arrives for the entry, which can be at once (the last
    // queue to register lets the kernel hand out the requests it held back), or with an error.
    let started = Instant::now();
    let mut arrived = loop {
        // SAFETY: the iovecs, header and payload outlive the ring (dropped after it).
        unsafe { ring.submission().push(&sqe(CMD_REGISTER, 0)) }
            .map_err(|_| io::Error::other("submission queue full"))?;
        ring.submit()?;
        let Some(c) = ring.completion().next() else { break None };
        if c.result() >= 0 {
            break Some(c.result());
        }
        let e = -c.result();
        if e == libc::EAGAIN && started.elapsed() < Duration::from_secs(5) {
            // The kernel has not taken the INIT reply yet.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        return Err(io::Error::from_raw_os_error(e));
    };
    let _ = registered.send(Ok(()));
    let mut placement = placement.and_then(|cpus| Placement::new(cpus, qid));
    // Moved off the queue's CPU to hand over a large reply (see MOVE_MIN).
    let mut moved = false;
    loop {
        if moved {
            // The reply is copied as the commit is submitted; then back home to wait. (Should
            // this submission fail, the wait below submits the commit again, from home.)
            let _ = ring.submit();
            if let Err(e) = crate::sys::pin_to_cpu(qid as usize) {
                log::debug!("io_uring queue {qid}: not pinned again: {e}");
            }
            moved = false;
        }
        let res = match arrived.take() {
            Some(res) => res,
            None => loop {
                match ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => return Err(e),
                }
                if let Some(c) = ring.completion().next() {
                    break c.result();
                }
            },
        };
        if let Some(p) = &mut placement {
            p.check(qid);
        }
        if res < 0 {
            return match -res {
                // The mount is gone.
                libc::ENOTCONN | libc::ECONNABORTED | libc::ENODEV | libc::ECANCELED => Ok(()),
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
        let commit_id = rd64(&hdr.ent, 8);
        let in_len = rd32(&hdr.ent, 16) as usize;
        let out_len = match answer_from_pages(fuse, &mut hdr, &mut payload) {
            Some(n) => {
                // While the system is calm (the thread is SCHED_IDLE), the kernel's copy of a
                // large reply runs on another CPU than the reader's.
                if n >= MOVE_MIN && IDLE.get() && !others.is_empty() {
                    moved = crate::sys::pin_to_cpus(others).is_ok();
                }
                n
            }
            None => {
                // The last reply's file pages go; the request's own payload stays.
                payload.restore(in_len.min(PAYLOAD))?;
                answer_request(fuse, &mut hdr, payload.bytes(), in_len.min(PAYLOAD))
            }
        };
        hdr.ent[16..20].copy_from_slice(&(out_len as u32).to_ne_bytes());
        // SAFETY: as above.
        unsafe { ring.submission().push(&sqe(CMD_COMMIT_AND_FETCH, commit_id)) }
            .map_err(|_| io::Error::other("submission queue full"))?;
    }
}

/// How often a queue thread counts the runnable tasks, and how long there must be no more of
/// them than CPUs before it goes back to `SCHED_IDLE`.
const PLACEMENT_CHECK: Duration = Duration::from_millis(20);
const PLACEMENT_CALM: Duration = Duration::from_millis(200);

/// A queue thread's scheduling policy: `SCHED_IDLE` while the system has no more runnable
/// tasks than CPUs, normal otherwise.
///
/// Replying wakes the requester, whose CPU is this queue's CPU, where the queue thread is
/// still running. As a normal task it makes that CPU look busy, so the scheduler moves the
/// requester to an idle CPU; the requester's next request then goes to that CPU's queue, and
/// the reply moves it back. Every round trip paid an idle CPU's wake-up and a migration:
/// 31-46 µs per `getxattr`, against 10-12 µs with the requester kept on one CPU (`taskset`).
/// A CPU running only `SCHED_IDLE` tasks counts as idle for that choice, so the requester is
/// woken where it was and runs as soon as the queue thread sleeps (`tar -x` of 30k files:
/// 6.5-7.3 s against 11-11.7 s).
///
/// A `SCHED_IDLE` thread yields to every normal task on its CPU, and the queue threads are
/// pinned: where tasks wait for CPUs anyway, the thread goes back to normal priority. (How
/// much that saves did not show on this machine: 5000 calls of a nice-10 requester beside two
/// nice -10 CPU hogs took 3.5-15.6 s from run to run, with normal threads as with these.)
/// The count is `/proc/loadavg`'s runnable tasks, read at a request at most every
/// [`PLACEMENT_CHECK`]. Leaving `SCHED_IDLE` takes `CAP_SYS_NICE` (or a high
/// `RLIMIT_NICE`), which [`start`] probes for; without it the threads stay normal.
pub(crate) struct Placement {
    loadavg: std::fs::File,
    cpus: usize,
    next: Instant,
    calm_since: Instant,
}

impl Placement {
    pub(crate) fn new(cpus: usize, qid: u16) -> Option<Placement> {
        let loadavg = std::fs::File::open("/proc/loadavg").ok()?;
        let now = Instant::now();
        // Calm from the start: the first check makes the thread SCHED_IDLE unless CPUs are short.
        let calm_since = now.checked_sub(PLACEMENT_CALM).unwrap_or(now);
        let mut p = Placement { loadavg, cpus, next: now, calm_since };
        p.check(qid);
        Some(p)
    }

    pub(crate) fn check(&mut self, qid: u16) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + PLACEMENT_CHECK;
        let mut buf = [0u8; 128];
        let Some(running) = std::os::unix::fs::FileExt::read_at(&self.loadavg, &mut buf, 0)
            .ok()
            .and_then(|n| runnable(&buf[..n]))
        else {
            return;
        };
        let was = IDLE.get();
        let idle = if running > self.cpus {
            self.calm_since = now;
            false
        } else {
            was || now.duration_since(self.calm_since) >= PLACEMENT_CALM
        };
        if idle != was {
            match crate::sys::set_sched_idle(idle) {
                Ok(()) => {
                    IDLE.set(idle);
                    let policy = if idle { "SCHED_IDLE" } else { "SCHED_OTHER" };
                    log::debug!("server thread {qid}: {policy} ({running} tasks runnable)");
                }
                Err(e) => log::warn!("server thread {qid}: scheduling policy: {e}"),
            }
        }
    }
}

/// Whether server threads may follow [`Placement`]: they must be able to leave `SCHED_IDLE`
/// again (probed once, on a throwaway thread, for the queues, the `/dev/fuse` threads and the
/// read-ahead workers alike) and read `/proc/loadavg`.
pub(crate) fn placement_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| {
        std::thread::spawn(|| {
            crate::sys::set_sched_idle(true).and_then(|_| crate::sys::set_sched_idle(false)).is_ok()
                && std::fs::File::open("/proc/loadavg").is_ok()
        })
        .join()
        .unwrap_or(false)
    })
}

/// The number of runnable tasks in `/proc/loadavg` ("0.14 0.99 1.26 2/234 5678").
fn runnable(loadavg: &[u8]) -> Option<usize> {
    let field = std::str::from_utf8(loadavg).ok()?.split_ascii_whitespace().nth(3)?;
    field.split_once('/')?.0.parse().ok()
}

/// A large READ handed to a queue thread's helper: the queue thread waits for it, so the
/// pointers stay valid for the helper's whole use of them.
struct ReadJob {
    fuse: *const Fuse,
    ctx: Ctx,
    ino: u64,
    fh: u64,
    off: u64,
    buf: *mut u8,
    len: usize,
}

// SAFETY: see ReadJob: the sender blocks until the job's answer is back.
unsafe impl Send for ReadJob {}

/// A queue thread's helper: a thread not pinned to the queue's CPU.
struct ReadHelper {
    jobs: std::sync::mpsc::SyncSender<ReadJob>,
    done: std::sync::mpsc::Receiver<Result<u32, i32>>,
}

thread_local! {
    static HELPER: std::cell::RefCell<Option<ReadHelper>> = const { std::cell::RefCell::new(None) };
    /// Whether this queue thread is SCHED_IDLE now: its [`Placement`]'s state.
    static IDLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl ReadHelper {
    fn spawn() -> io::Result<ReadHelper> {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<ReadJob>(1);
        let (tx, done) = std::sync::mpsc::sync_channel(1);
        // Within the kernel's 15 characters of a thread name up to 10000 CPUs ("uring-9999-3-rd").
        let name = std::thread::current().name().map_or("uring-rd".into(), |n| format!("{n}-rd"));
        std::thread::Builder::new().name(name).spawn(move || {
            // Spawned by a pinned queue thread, whose CPU set it inherits: free it.
            crate::sys::free_thread();
            while let Ok(j) = rx.recv() {
                // SAFETY: the queue thread that sent the job waits for this answer, keeping
                // the Fuse and the buffer alive and untouched meanwhile.
                let (fuse, buf) = unsafe { (&*j.fuse, std::slice::from_raw_parts_mut(j.buf, j.len)) };
                let r = match fuse.read_into(&j.ctx, j.ino, j.fh, j.off, buf) {
                    Answer::Written(n) => Ok(n),
                    Answer::Err(e) => Err(e),
                    _ => Err(libc::EIO),
                };
                if tx.send(r).is_err() {
                    break;
                }
            }
        })?;
        Ok(ReadHelper { jobs, done })
    }
}

/// Reads through this queue thread's helper (started at its first large read). A queue answers
/// the requests made on its CPU, and a sequential reader there would otherwise share that CPU
/// with the server's copy into the reply buffer and the kernel's copy out of it: with `dd`
/// pinned to one CPU, a cold 1 GiB lower file took 1.8 s through the queues against 0.65 s
/// through `/dev/fuse`. Falls back to reading here when no helper can be had.
fn read_by_helper(f: &Fuse, ctx: &Ctx, ino: u64, fh: u64, off: u64, buf: &mut [u8]) -> Answer<'static> {
    // A SCHED_IDLE queue thread woken by its helper would wait for a reader busy on its CPU
    // before it could pass the data on: large reads are waited for at normal priority.
    if IDLE.get() {
        crate::sys::with_sched_idle(false, || read_by_helper_as_is(f, ctx, ino, fh, off, buf))
    } else {
        read_by_helper_as_is(f, ctx, ino, fh, off, buf)
    }
}

fn read_by_helper_as_is(f: &Fuse, ctx: &Ctx, ino: u64, fh: u64, off: u64, buf: &mut [u8]) -> Answer<'static> {
    let job = ReadJob { fuse: f, ctx: *ctx, ino, fh, off, buf: buf.as_mut_ptr(), len: buf.len() };
    let r = HELPER.with_borrow_mut(|h| {
        if h.is_none() {
            *h = ReadHelper::spawn().map_err(|e| log::debug!("io_uring read helper: {e}")).ok();
        }
        let helper = h.as_ref()?;
        if helper.jobs.send(job).is_err() {
            *h = None;
            return None;
        }
        match helper.done.recv() {
            Ok(r) => Some(r),
            Err(_) => {
                // The helper died with the job: it cannot be using the buffer any more.
                *h = None;
                Some(Err(libc::EIO))
            }
        }
    });
    match r {
        Some(Ok(n)) => Answer::Written(n),
        Some(Err(e)) => Answer::Err(e),
        None => f.read_into(ctx, ino, fh, off, buf),
    }
}

/// Sets `len` (the iovec count) of a built SQE, which `UringCmd80` leaves 0.
fn with_iovec_count(e: squeue::Entry128, n: u32) -> squeue::Entry128 {
    // SAFETY: Entry128 is the 128-byte `io_uring_sqe` (repr(C)); `len` is the u32 at byte 24.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(e) };
    raw[24..28].copy_from_slice(&n.to_ne_bytes());
    unsafe { std::mem::transmute(raw) }
}

/// Replies of at least this many bytes answered from a lower file's pages are handed over
/// from another CPU than the queue's. The queue's CPU is the reader's, and the kernel copies
/// the reply into its page cache as the commit is submitted: with a sequential reader (which
/// copies the same data again into its buffer there) both copies took one CPU and the other
/// sat idle. Moved for the commit and pinned back before waiting, a 2 GiB lower file read
/// through a fresh mount with the file cached took 1.11 s against 1.19 s not moving (medians
/// of 10 alternating rounds; fuse-overlayfs, whose threads are not pinned, 1.27 s), and cold
/// 1.10 s against 1.48 s (5 rounds; fuse-overlayfs 1.58 s); the rounds spread by half either
/// way on this host. Below this size, two moves cost more than the copy they take elsewhere.
const MOVE_MIN: usize = 512 << 10;

/// Fills in the reply to the request in `hdr`/`payload` (the `in_len` bytes of its payload);
/// returns the length of the reply's payload.
fn answer_request(fuse: &Fuse, hdr: &mut Header, payload: &mut [u8], in_len: usize) -> usize {
    let (error, len) = answer_in(fuse, "io_uring", &hdr.in_out, &hdr.op_in, payload, in_len);
    out_header(hdr, error, len)
}

/// Turns the request header in `hdr` into its reply's (`struct fuse_out_header`: length, error,
/// unique); returns `len`.
fn out_header(hdr: &mut Header, error: i32, len: usize) -> usize {
    let unique = rd64(&hdr.in_out, 8);
    let oh = &mut hdr.in_out;
    oh[0..4].copy_from_slice(&(16 + len as u32).to_ne_bytes());
    oh[4..8].copy_from_slice(&(-error).to_ne_bytes());
    oh[8..16].copy_from_slice(&unique.to_ne_bytes());
    len
}

/// Answers a large page-aligned READ of a lower file by laying the file's pages over the
/// entry's payload buffer, from which the kernel copies the reply into its page cache (one
/// copy; `pread` into the buffer made it two, and the copies were the whole cost of a 2 GiB
/// read with the file cached: 1.9-2.4 s of server CPU against 0.5-1.5 s, 3 + 3 runs). Returns the reply's
/// payload length, or `None` for any other request, which is answered as usual.
fn answer_from_pages(fuse: &Fuse, hdr: &mut Header, payload: &mut crate::sys::PayloadBuf) -> Option<usize> {
    if rd32(&hdr.in_out, 4) != FUSE_READ {
        return None;
    }
    let (ino, op) = (rd64(&hdr.in_out, 16), &hdr.op_in);
    let (fh, off, size) = (rd64(op, 0), rd64(op, 8), (rd32(op, 16) as usize).min(payload.capacity()));
    if size < crate::fs::MAP_READ_MIN || off % crate::sys::page_size() as u64 != 0 {
        return None;
    }
    let found = fuse.read_lower_range(ino, fh, off, size)?;
    let unique = rd64(&hdr.in_out, 8);
    log::debug!("FUSE({unique:3}) ino {ino:#018x} READ (io_uring, pid {})", rd32(&hdr.in_out, 32));
    let (fd, n) = match found {
        Ok(r) => r,
        Err(e) => return Some(out_header(hdr, e, 0)),
    };
    if let Err(e) = payload.lay_file(fd.as_fd(), off, n) {
        log::debug!("read: laying fh {fh} over the reply buffer failed ({e}), reading instead");
        return None;
    }
    Some(out_header(hdr, 0, n))
}

/// Answers a request whichever way it came: `inh` is its `struct fuse_in_header`, `op` its
/// operation's fixed argument struct, and `payload` holds the `in_len` bytes that follow (names,
/// data) and receives the reply's payload. Returns the reply's errno (0 for success) and
/// payload length.
pub(crate) fn answer_in(
    fuse: &Fuse,
    transport: &str,
    inh: &[u8],
    op: &[u8],
    payload: &mut [u8],
    in_len: usize,
) -> (i32, usize) {
    let (opcode, unique, nodeid) = (rd32(inh, 4), rd64(inh, 8), rd64(inh, 16));
    let ctx = Ctx { uid: rd32(inh, 24), gid: rd32(inh, 28), pid: rd32(inh, 32) };
    log::debug!("FUSE({unique:3}) ino {nodeid:#018x} {} ({transport}, pid {})", op_name(opcode), ctx.pid);
    let mut out = Reply { buf: payload, len: 0, error: 0 };
    if !allowed(fuse.access, opcode, ctx.uid) {
        out.error = libc::EACCES;
    } else {
        dispatch(fuse, &ctx, opcode, nodeid, op, in_len, &mut out);
    }
    (out.error, if out.error == 0 { out.len } else { 0 })
}

/// The kernel's name of an operation, as `-d` logs requests.
pub(crate) fn op_name(opcode: u32) -> std::borrow::Cow<'static, str> {
    let n = match opcode {
        FUSE_LOOKUP => "LOOKUP",
        FUSE_GETATTR => "GETATTR",
        FUSE_SETATTR => "SETATTR",
        FUSE_READLINK => "READLINK",
        FUSE_SYMLINK => "SYMLINK",
        FUSE_MKNOD => "MKNOD",
        FUSE_MKDIR => "MKDIR",
        FUSE_UNLINK => "UNLINK",
        FUSE_RMDIR => "RMDIR",
        FUSE_RENAME => "RENAME",
        FUSE_LINK => "LINK",
        FUSE_OPEN => "OPEN",
        FUSE_READ => "READ",
        FUSE_WRITE => "WRITE",
        FUSE_STATFS => "STATFS",
        FUSE_RELEASE => "RELEASE",
        FUSE_FSYNC => "FSYNC",
        FUSE_SETXATTR => "SETXATTR",
        FUSE_GETXATTR => "GETXATTR",
        FUSE_LISTXATTR => "LISTXATTR",
        FUSE_REMOVEXATTR => "REMOVEXATTR",
        FUSE_FLUSH => "FLUSH",
        FUSE_OPENDIR => "OPENDIR",
        FUSE_READDIR => "READDIR",
        FUSE_RELEASEDIR => "RELEASEDIR",
        FUSE_FSYNCDIR => "FSYNCDIR",
        FUSE_ACCESS => "ACCESS",
        FUSE_CREATE => "CREATE",
        FUSE_IOCTL => "IOCTL",
        FUSE_TMPFILE => "TMPFILE",
        FUSE_FALLOCATE => "FALLOCATE",
        FUSE_READDIRPLUS => "READDIRPLUS",
        FUSE_RENAME2 => "RENAME2",
        FUSE_LSEEK => "LSEEK",
        FUSE_COPY_FILE_RANGE => "COPY_FILE_RANGE",
        _ => return format!("opcode {opcode}").into(),
    };
    n.into()
}

/// fuser's check for mounts not open to all, as both transports make it: other users may only
/// finish what they hold.
pub(crate) fn allowed(access: Access, opcode: u32, uid: u32) -> bool {
    let ok = match access {
        Access::All => true,
        Access::RootAndOwner(owner) => uid == owner || uid == 0,
        Access::Owner(owner) => uid == owner,
    };
    ok || matches!(
        opcode,
        FUSE_READ
            | FUSE_READDIR
            | FUSE_READDIRPLUS
            | FUSE_WRITE
            | FUSE_FSYNC
            | FUSE_FSYNCDIR
            | FUSE_RELEASE
            | FUSE_RELEASEDIR
    )
}

/// The reply being built in an entry's payload buffer.
struct Reply<'a> {
    buf: &'a mut [u8],
    len: usize,
    error: i32,
}

impl Reply<'_> {
    fn put(&mut self, b: &[u8]) -> bool {
        if self.len + b.len() > self.buf.len() {
            return false;
        }
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
        true
    }
    fn u32(&mut self, v: u32) {
        self.put(&v.to_ne_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.put(&v.to_ne_bytes());
    }
    /// `struct fuse_attr`.
    fn attr(&mut self, a: &FileAttr) {
        let (at, atn) = secs(a.atime);
        let (mt, mtn) = secs(a.mtime);
        let (ct, ctn) = secs(a.ctime);
        self.u64(a.ino.0);
        self.u64(a.size);
        self.u64(a.blocks);
        self.u64(at as u64);
        self.u64(mt as u64);
        self.u64(ct as u64);
        self.u32(atn);
        self.u32(mtn);
        self.u32(ctn);
        self.u32(mode_of(a.kind) | u32::from(a.perm));
        self.u32(a.nlink);
        self.u32(a.uid);
        self.u32(a.gid);
        self.u32(a.rdev);
        self.u32(a.blksize);
        self.u32(0);
    }
    /// `struct fuse_entry_out`.
    fn entry(&mut self, ttl: &Duration, a: &FileAttr, id: u64) {
        self.u64(id);
        self.u64(0);
        self.u64(ttl.as_secs());
        self.u64(ttl.as_secs());
        self.u32(ttl.subsec_nanos());
        self.u32(ttl.subsec_nanos());
        self.attr(a);
    }
    /// `struct fuse_open_out`.
    fn open(&mut self, fh: u64, flags: u32, backing: Option<u32>) {
        self.u64(fh);
        self.u32(flags | if backing.is_some() { fuser::FopenFlags::FOPEN_PASSTHROUGH.bits() } else { 0 });
        self.u32(backing.unwrap_or(0));
    }
    /// Encodes an answer, for requests whose reply is just that.
    fn answer(&mut self, ttl: &Duration, a: Answer<'_>) {
        match a {
            Answer::Err(e) => self.error = e,
            Answer::Ok => {}
            Answer::Entry(attr, id, cache) => {
                self.entry(if cache { ttl } else { &Duration::ZERO }, &attr, id)
            }
            Answer::Attr(attr) => {
                self.u64(ttl.as_secs());
                self.u32(ttl.subsec_nanos());
                self.u32(0);
                self.attr(&attr);
            }
            Answer::Data(d) => {
                if !self.put(d) {
                    self.error = libc::EIO;
                }
            }
            Answer::XattrSize(n) => {
                self.u32(n);
                self.u32(0);
            }
            Answer::Open { fh, flags, backing } => self.open(fh, flags.bits(), backing),
            Answer::Create { attr, id, fh, flags, backing } => {
                self.entry(ttl, &attr, id);
                self.open(fh, flags.bits(), backing);
            }
            Answer::Written(n) => {
                self.u32(n);
                self.u32(0);
            }
            Answer::Ioctl(result, data) => {
                // struct fuse_ioctl_out: result, flags, in_iovs, out_iovs.
                for v in [result as u32, 0, 0, 0] {
                    self.u32(v);
                }
                if !self.put(&data) {
                    self.error = libc::EIO;
                }
            }
            Answer::Statfs(s) => {
                for v in [s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree] {
                    self.u64(v);
                }
                for v in [s.f_bsize as u32, s.f_namemax as u32, s.f_frsize as u32, 0] {
                    self.u32(v);
                }
                self.put(&[0u8; 24]);
            }
            Answer::Offset(o) => self.u64(o as u64),
        }
    }
}

/// Seconds and nanoseconds since the epoch, negative before it (as fuser encodes times).
fn secs(t: std::time::SystemTime) -> (i64, u32) {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let s = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() == 0 { (-s, 0) } else { (-s - 1, 1_000_000_000 - d.subsec_nanos()) }
        }
    }
}

fn mode_of(kind: FileType) -> u32 {
    match kind {
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Directory => libc::S_IFDIR,
        FileType::RegularFile => libc::S_IFREG,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Socket => libc::S_IFSOCK,
    }
}

/// READDIR entries (`struct fuse_dirent`), as many as fit in `max` bytes.
struct Dirents<'r, 'a> {
    out: &'r mut Reply<'a>,
    max: usize,
}

/// Appends `struct fuse_dirent` for `name` (padded to 8 bytes); false when it would not fit.
fn dirent(out: &mut Reply<'_>, max: usize, ino: u64, off: u64, kind: FileType, name: &OsStr) -> bool {
    let name = name.as_bytes();
    let size = (24 + name.len()).div_ceil(8) * 8;
    if out.len + size > max.min(out.buf.len()) {
        return false;
    }
    out.u64(ino);
    out.u64(off);
    out.u32(name.len() as u32);
    out.u32(mode_of(kind) >> 12);
    out.put(name);
    let pad = size - 24 - name.len();
    out.put(&[0u8; 8][..pad]);
    true
}

impl DirOut for Dirents<'_, '_> {
    fn add(&mut self, ino: u64, off: u64, kind: FileType, name: &OsStr) -> bool {
        !dirent(self.out, self.max, ino, off, kind, name)
    }
}

/// READDIRPLUS entries (`struct fuse_entry_out` then `struct fuse_dirent`).
struct DirentsPlus<'r, 'a> {
    out: &'r mut Reply<'a>,
    max: usize,
}

impl DirPlusOut for DirentsPlus<'_, '_> {
    fn add(&mut self, off: u64, name: &OsStr, ttl: &Duration, attr: &FileAttr, id: u64) -> bool {
        let size = 128 + (24 + name.len()).div_ceil(8) * 8;
        if self.out.len + size > self.max.min(self.out.buf.len()) {
            return true;
        }
        self.out.entry(ttl, attr, id);
        !dirent(self.out, self.max, attr.ino.0, off, attr.kind, name)
    }
}

/// The NUL-terminated names at the start of a payload.
fn names(p: &[u8], n: usize) -> Option<Vec<&OsStr>> {
    let mut out = Vec::with_capacity(n);
    let mut rest = p;
    for _ in 0..n {
        let end = rest.iter().position(|&c| c == 0)?;
        out.push(OsStr::from_bytes(&rest[..end]));
        rest = &rest[end + 1..];
    }
    Some(out)
}

fn set_time(valid: u32, set: u32, now: u32, secs: u64, nsecs: u32) -> Option<SetTime> {
    if valid & now != 0 {
        Some(SetTime::Now)
    } else if valid & set != 0 {
        Some(SetTime::At(secs as i64, nsecs as i64))
    } else {
        None
    }
}

/// Decodes the request (its payload: the first `in_len` bytes of `out`'s buffer) and answers
/// it into `out`.
fn dispatch(fuse: &Fuse, ctx: &Ctx, opcode: u32, ino: u64, op: &[u8], in_len: usize, out: &mut Reply<'_>) {
    let f = fuse;
    // Requests name the node the kernel's id stands for (an alias's node: [`Fuse::resolve`]).
    let (node, split) = f.resolve(ino);
    let ttl = if split { Duration::ZERO } else { f.ttl };
    let (kid, ino) = (ino, node);
    // Operations whose reply carries data read no payload but a name: copied out first, as the
    // reply is written over the payload.
    match opcode {
        // OPEN keeps the kernel's id too: an alias's handles are its own inode's.
        FUSE_OPEN => return out.answer(&ttl, f.open(ctx, kid, ino, rd32(op, 0) as i32)),
        FUSE_READLINK => return f.readlink(ctx, ino, |a| out.answer(&ttl, a)),
        FUSE_READ => {
            let (fh, off, size) = (rd64(op, 0), rd64(op, 8), (rd32(op, 16) as usize).min(out.buf.len()));
            // Straight into the reply buffer: one copy, where a mapping copied out would be two.
            // A large one is read by this thread's helper, which may run on another CPU.
            let r = if size >= crate::fs::MAP_READ_MIN {
                read_by_helper(f, ctx, ino, fh, off, &mut out.buf[..size])
            } else {
                f.read_into(ctx, ino, fh, off, &mut out.buf[..size])
            };
            match r {
                Answer::Written(n) => out.len = n as usize,
                a => out.answer(&ttl, a),
            }
            return;
        }
        FUSE_GETXATTR => {
            let input = out.buf[..in_len].to_vec();
            match names(&input, 1) {
                Some(n) => f.getxattr(ctx, ino, n[0], rd32(op, 0), |a| out.answer(&ttl, a)),
                None => out.error = libc::EINVAL,
            }
            return;
        }
        FUSE_LISTXATTR => return f.listxattr(ctx, ino, rd32(op, 0), |a| out.answer(&ttl, a)),
        FUSE_READDIR => {
            let (fh, off, size) = (rd64(op, 0), rd64(op, 8), rd32(op, 16) as usize);
            let a = f.readdir(ctx, ino, fh, off, &mut Dirents { out, max: size });
            return out.answer(&ttl, a);
        }
        FUSE_READDIRPLUS => {
            let (fh, off, size) = (rd64(op, 0), rd64(op, 8), rd32(op, 16) as usize);
            let a = f.readdirplus(ctx, ino, fh, off, &mut DirentsPlus { out, max: size });
            return out.answer(&ttl, a);
        }
        _ => {}
    }
    let a = answer(f, ctx, opcode, ino, op, &out.buf[..in_len]);
    out.answer(&ttl, a);
}

/// The operations whose reply is a fixed struct (or nothing), given the request's payload.
fn answer(f: &Fuse, ctx: &Ctx, opcode: u32, ino: u64, op: &[u8], p: &[u8]) -> Answer<'static> {
    macro_rules! name {
        ($n:expr) => {
            match names(p, $n) {
                Some(v) => v,
                None => return Answer::Err(libc::EINVAL),
            }
        };
    }
    match opcode {
        FUSE_LOOKUP => f.lookup(ctx, ino, name!(1)[0]),
        FUSE_GETATTR => {
            let fh = (rd32(op, 0) & FUSE_GETATTR_FH != 0).then(|| rd64(op, 8));
            f.getattr(ctx, ino, fh)
        }
        FUSE_SETATTR => {
            let valid = rd32(op, 0);
            let opt32 = |bit: u32, at: usize| (valid & bit != 0).then(|| rd32(op, at));
            let attr = SetAttr {
                mode: opt32(FATTR_MODE, 68),
                uid: opt32(FATTR_UID, 76),
                gid: opt32(FATTR_GID, 80),
                size: (valid & FATTR_SIZE != 0).then(|| rd64(op, 16)),
                atime: set_time(valid, FATTR_ATIME, FATTR_ATIME_NOW, rd64(op, 32), rd32(op, 56)),
                mtime: set_time(valid, FATTR_MTIME, FATTR_MTIME_NOW, rd64(op, 40), rd32(op, 60)),
                fh: (valid & FATTR_FH != 0).then(|| rd64(op, 8)),
                caller: Caller { uid: ctx.uid, gid: ctx.gid, umask: 0, pid: ctx.pid },
            };
            let s = SetattrIn { attr, ctime: valid & FATTR_CTIME != 0 };
            f.setattr(ctx, ino, s)
        }
        FUSE_SYMLINK => {
            let n = name!(2);
            f.symlink(ctx, ino, n[0], n[1])
        }
        FUSE_MKNOD => f.mknod(ctx, ino, name!(1)[0], rd32(op, 0), rd32(op, 8), rd32(op, 4)),
        FUSE_MKDIR => f.mkdir(ctx, ino, name!(1)[0], rd32(op, 0), rd32(op, 4)),
        FUSE_UNLINK => f.unlink(ctx, ino, name!(1)[0]),
        FUSE_RMDIR => f.rmdir(ctx, ino, name!(1)[0]),
        FUSE_RENAME => {
            let n = name!(2);
            f.rename(ctx, ino, n[0], rd64(op, 0), n[1], 0)
        }
        FUSE_RENAME2 => {
            let n = name!(2);
            f.rename(ctx, ino, n[0], rd64(op, 0), n[1], rd32(op, 8))
        }
        FUSE_LINK => f.link(ctx, f.node_of(rd64(op, 0)), ino, name!(1)[0]),
        FUSE_WRITE => {
            let (fh, off, size, wflags) = (rd64(op, 0), rd64(op, 8), rd32(op, 16) as usize, rd32(op, 20));
            let Some(data) = p.get(..size) else { return Answer::Err(libc::EINVAL) };
            f.write(ctx, ino, fh, off, data, wflags & FUSE_WRITE_KILL_SUIDGID != 0)
        }
        FUSE_STATFS => f.statfs(ctx, ino),
        FUSE_RELEASE => f.release(ctx, ino, rd64(op, 0)),
        FUSE_FSYNC => f.fsync(ctx, ino, rd64(op, 0), rd32(op, 8) & FUSE_FSYNC_FDATASYNC != 0),
        FUSE_SETXATTR => {
            // struct fuse_setxattr_in: size, flags, and with FUSE_SETXATTR_EXT setxattr_flags
            // and padding.
            let (size, flags) = (rd32(op, 0) as usize, rd32(op, 4) as i32);
            let ext = f.setxattr_ext.load(std::sync::atomic::Ordering::Relaxed);
            let kill_sgid = ext && rd32(op, 8) & FUSE_SETXATTR_ACL_KILL_SGID != 0;
            let n = name!(1);
            let start = n[0].len() + 1;
            let Some(value) = p.get(start..start + size) else { return Answer::Err(libc::EINVAL) };
            f.setxattr(ctx, ino, n[0], value, flags, kill_sgid)
        }
        FUSE_REMOVEXATTR => f.removexattr(ctx, ino, name!(1)[0]),
        FUSE_FLUSH => f.flush(ctx, ino, rd64(op, 0)),
        FUSE_OPENDIR => f.opendir(ctx, ino),
        FUSE_RELEASEDIR => f.releasedir(ctx, ino, rd64(op, 0)),
        FUSE_FSYNCDIR => f.fsyncdir(ctx, ino, rd32(op, 8) & FUSE_FSYNC_FDATASYNC != 0),
        FUSE_ACCESS => f.access(ctx, ino, rd32(op, 0) as i32),
        FUSE_CREATE => f.create(ctx, ino, name!(1)[0], rd32(op, 4), rd32(op, 8), rd32(op, 0) as i32),
        // struct fuse_create_in, then a name ("/") that stands for none.
        FUSE_TMPFILE => f.tmpfile(ctx, ino, rd32(op, 4), rd32(op, 8), rd32(op, 0) as i32),
        FUSE_FALLOCATE => f.fallocate(ctx, ino, rd64(op, 0), rd64(op, 8), rd64(op, 16), rd32(op, 24) as i32),
        FUSE_LSEEK => f.lseek(ctx, ino, rd64(op, 0), rd64(op, 8) as i64, rd32(op, 16) as i32),
        FUSE_IOCTL => {
            // struct fuse_ioctl_in: fh, flags, cmd, arg, in_size, out_size.
            let (cmd, in_size, out_size) = (rd32(op, 12), rd32(op, 24) as usize, rd32(op, 28));
            let Some(input) = p.get(..in_size) else { return Answer::Err(libc::EINVAL) };
            f.ioctl(ctx, ino, cmd, input, out_size)
        }
        FUSE_COPY_FILE_RANGE => f.copy_file_range(
            ctx,
            ino,
            rd64(op, 0),
            rd64(op, 8),
            f.node_of(rd64(op, 16)),
            rd64(op, 24),
            rd64(op, 32),
            rd64(op, 40),
        ),
        _ => {
            log::debug!("opcode {opcode} not implemented");
            Answer::Err(libc::ENOSYS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runnable_tasks_are_read_from_loadavg() {
        assert_eq!(runnable(b"0.14 0.99 1.26 3/234 5678\n"), Some(3));
        assert_eq!(runnable(b"0.00 0.00 0.00 1/1 1"), Some(1));
        assert_eq!(runnable(b"0.14 0.99 1.26"), None);
        assert_eq!(runnable(b"0.14 0.99 1.26 x/234 5678"), None);
    }

    #[test]
    fn header_matches_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<Header>(), 288);
    }

    #[test]
    fn names_split_at_nul_and_refuse_unterminated() {
        let p = b"old\0new\0";
        let n = names(p, 2).unwrap();
        assert_eq!(n, [OsStr::new("old"), OsStr::new("new")]);
        assert!(names(b"x", 1).is_none());
    }

    #[test]
    fn dirents_are_padded_and_stop_when_full() {
        let mut buf = vec![0u8; 64];
        let mut r = Reply { buf: &mut buf, len: 0, error: 0 };
        assert!(dirent(&mut r, 64, 5, 1, FileType::RegularFile, OsStr::new("abc")));
        assert_eq!(r.len, 32);
        assert_eq!(rd32(r.buf, 20), libc::DT_REG as u32);
        assert!(!dirent(&mut r, 64, 6, 2, FileType::Directory, OsStr::new("0123456789")));
        assert_eq!(r.len, 32);
    }

    #[test]
    fn access_lets_others_finish_what_they_hold() {
        assert!(allowed(Access::All, FUSE_LOOKUP, 7));
        assert!(!allowed(Access::Owner(1000), FUSE_LOOKUP, 7));
        assert!(allowed(Access::Owner(1000), FUSE_RELEASE, 7));
        assert!(allowed(Access::RootAndOwner(1000), FUSE_LOOKUP, 0));
        assert!(!allowed(Access::Owner(1000), FUSE_LOOKUP, 0));
    }

    #[test]
    fn times_before_the_epoch_are_negative() {
        let t = std::time::UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(secs(t), (-2, 500_000_000));
        assert_eq!(secs(std::time::UNIX_EPOCH + Duration::new(3, 4)), (3, 4));
    }
}
