//! DiffID / ChainID and the layer input stack (decompression by magic bytes,
//! hashing adapters).
//!
//! Hard parts:
//! - a DiffID is the sha256 of the *uncompressed* tar exactly as stored,
//!   including the end-of-archive blocks and any trailing padding, so the
//!   hash is taken over every byte the decompressor yields, not over what a
//!   tar parser consumes;
//! - ChainID(L1) = DiffID(L1); ChainID(Ln) = sha256("ChainID(Ln-1) DiffID(Ln)")
//!   where both are full `sha256:<hex>` strings joined by one space;
//! - compression is detected from magic bytes (gzip `1f 8b`, zstd
//!   `28 b5 2f fd`), never from the file name; a short read while peeking must
//!   not lose bytes, so the peeked prefix is chained back in front;
//! - throughput: 1 MiB buffers everywhere, sha2 with its asm/SHA-NI backend;
//!   gzip/zstd are decoded on their own thread ([`Pipelined`]) so decoding
//!   overlaps with extraction or hashing, and the consumer's small reads (tar
//!   headers are 512 bytes) are memcpys from a decoded chunk instead of calls
//!   into the decoder. A decoder error or a dead thread is an error, never an
//!   early end of stream.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use super::error::{Context, Error, Result};
use super::progress::Progress;

/// Buffer size for all layer I/O.
pub const BUF_SIZE: usize = 1 << 20;

/// `sha256:<hex>` of a finished hasher.
pub fn format_digest(h: Sha256) -> String {
    let out = h.finalize();
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in out.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// sha256 of a byte string, as `sha256:<hex>`.
pub fn sha256_str(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    format_digest(h)
}

/// Validates and normalises a digest: accepts `sha256:<64 hex>` or bare
/// `<64 hex>` (lower case); returns `sha256:<hex>`.
pub fn parse_digest(s: &str) -> Result<String> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(Error::new(format!("invalid digest {s:?} (want sha256:<64 lower-case hex digits>)")));
    }
    Ok(format!("sha256:{hex}"))
}

/// The hex part of a `sha256:<hex>` digest.
pub fn hex_of(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap_or(d)
}

/// ChainID of a layer given its parent's ChainID (None for a base layer).
pub fn chain_id(parent: Option<&str>, diff_id: &str) -> String {
    match parent {
        None => diff_id.to_string(),
        Some(p) => sha256_str(format!("{p} {diff_id}").as_bytes()),
    }
}

/// ChainIDs of an ordered list of DiffIDs (bottom first); the last one is the
/// ChainID of the whole chain.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let c = chain_id(out.last().map(|s| s.as_str()), d);
        out.push(c);
    }
    out
}

/// Compression of a layer blob, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub fn detect(prefix: &[u8]) -> Compression {
    if prefix.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Wraps a raw layer stream (plain, gzip or zstd) into a reader of the
/// uncompressed tar bytes.
pub fn decompress<R: Read + Send + 'static>(mut raw: R) -> Result<Box<dyn Read + Send>> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < prefix.len() {
        match raw.read(&mut prefix[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let head = io::Cursor::new(prefix[..got].to_vec());
    let joined = BufReader::with_capacity(BUF_SIZE, head.chain(raw));
    Ok(match detect(&prefix[..got]) {
        Compression::None => Box::new(joined),
        Compression::Gzip => Box::new(
            Pipelined::spawn(flate2::bufread::MultiGzDecoder::new(joined)).ctx(|| "start a gzip thread")?,
        ),
        Compression::Zstd => Box::new(
            Pipelined::spawn(zstd::stream::read::Decoder::with_buffer(joined).ctx(|| "zstd")?)
                .ctx(|| "start a zstd thread")?,
        ),
    })
}

/// Size of the chunks a decoding thread hands over, and how many may wait.
const PIPE_CHUNK: usize = 256 << 10;
const PIPE_DEPTH: usize = 8;

/// One message from a decoding thread: a chunk with its valid length (0 at
/// the end of the stream), or the decoder's error.
type Chunk = io::Result<(Vec<u8>, usize)>;

/// The output of a reader that runs on its own thread. Buffers go back to
/// the thread for reuse. When this is dropped the thread stops at its next
/// hand-over (it is not joined: it may be blocked reading stdin).
pub struct Pipelined {
    full: mpsc::Receiver<Chunk>,
    empty: mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    len: usize,
    eof: bool,
}

impl Pipelined {
    /// Starts `r` on a thread of its own.
    pub fn spawn<R: Read + Send + 'static>(r: R) -> io::Result<Pipelined> {
        let (full_tx, full) = mpsc::sync_channel::<Chunk>(PIPE_DEPTH);
        let (empty, empty_rx) = mpsc::channel::<Vec<u8>>();
        std::thread::Builder::new()
            .name("layer-decode".into())
            .spawn(move || Self::produce(r, &full_tx, &empty_rx))?;
        Ok(Pipelined { full, empty, cur: Vec::new(), pos: 0, len: 0, eof: false })
    }

    fn produce<R: Read>(mut r: R, full: &mpsc::SyncSender<Chunk>, empty: &mpsc::Receiver<Vec<u8>>) {
        loop {
            let mut buf = empty.try_recv().unwrap_or_else(|_| vec![0u8; PIPE_CHUNK]);
            let mut n = 0;
            let mut end = false;
            let mut err = None;
            while n < buf.len() {
                match r.read(&mut buf[n..]) {
                    Ok(0) => {
                        end = true;
                        break;
                    }
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            if n > 0 && full.send(Ok((buf, n))).is_err() {
                return; // the consumer is gone
            }
            if let Some(e) = err {
                let _ = full.send(Err(e));
                return;
            }
            if end {
                let _ = full.send(Ok((Vec::new(), 0)));
                return;
            }
        }
    }
}

impl Read for Pipelined {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.len {
            if self.eof {
                return Ok(0);
            }
            if self.cur.capacity() > 0 {
                let _ = self.empty.send(std::mem::take(&mut self.cur));
            }
            match self.full.recv() {
                Ok(Ok((_, 0))) => self.eof = true,
                Ok(Ok((buf, n))) => {
                    self.cur = buf;
                    self.pos = 0;
                    self.len = n;
                }
                Ok(Err(e)) => return Err(e),
                // The thread ended without an end-of-stream message (after
                // an error already returned, or a panic).
                Err(_) => return Err(io::Error::other("layer decoding stopped")),
            }
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Opens a layer file (`-` is stdin), with a progress bar on a terminal.
/// Returns the uncompressed stream.
pub fn open_layer(path: &Path, what: &str) -> Result<Box<dyn Read + Send>> {
    if path.as_os_str() == "-" {
        return decompress(io::stdin());
    }
    let f = File::open(path).ctx(|| format!("open {}", path.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let p = Progress::bytes(len, &format!("{what} {name}"));
    decompress(p.wrap_read(f))
}

/// A reader that hashes everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new(), count: 0 }
    }
    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }
    /// Reads the rest of the stream (hashing it) and returns the digest and
    /// the total byte count.
    pub fn finish(mut self) -> Result<(String, u64)> {
        let mut buf = vec![0u8; BUF_SIZE];
        loop {
            super::stop::check()?;
            match self.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok((format_digest(self.hasher), self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), count: 0 }
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    /// Flushes and returns the inner writer, the digest and the byte count.
    pub fn finish(mut self) -> io::Result<(W, String, u64)> {
        self.inner.flush()?;
        Ok((self.inner, format_digest(self.hasher), self.count))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// DiffID and uncompressed size of a stream of layer bytes (decompressed).
pub fn diff_id_of_reader<R: Read>(r: R) -> Result<(String, u64)> {
    HashingReader::new(r).finish()
}

/// DiffID and uncompressed size of a layer file (plain, gzip or zstd; `-` is stdin).
pub fn diff_id_of_file(path: &Path) -> Result<(String, u64)> {
    let r = open_layer(path, "digest")?;
    diff_id_of_reader(r).ctx(|| format!("digest {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_LAYER: &str = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

    #[test]
    fn empty_layer_diff_id() {
        let (d, n) = diff_id_of_reader(&[0u8; 1024][..]).unwrap();
        assert_eq!(d, EMPTY_LAYER);
        assert_eq!(n, 1024);
    }

    #[test]
    fn chain_id_math() {
        let a = "sha256:b9faacf55b51ef7b52e6d50be8fb4fdb67ebc194266a809b31ae8efa1fba24e9".to_string();
        let b = "sha256:bb2dfc9a6da195dd1b08bbd28cdfafa5f26cb8f93bde32af8f664f76b3969dd8".to_string();
        let c = "sha256:41266a7cfffb6517e0b2b0e64f9845f2e4d06c53782964802aa4a45ca96a1c70".to_string();
        assert_eq!(chain_id(None, &a), a);
        let ab = sha256_str(format!("{a} {b}").as_bytes());
        assert_eq!(chain_id(Some(&a), &b), ab);
        let abc = sha256_str(format!("{ab} {c}").as_bytes());
        assert_eq!(chain_ids(&[a.clone(), b.clone(), c.clone()]), vec![a.clone(), ab, abc]);
        assert!(chain_ids(&[]).is_empty());
        // Known value: sha256("sha256:x sha256:y") computed independently.
        assert_eq!(chain_id(Some("sha256:x"), "sha256:y"), sha256_str(b"sha256:x sha256:y"));
    }

    #[test]
    fn digest_parsing() {
        let hex = "b9faacf55b51ef7b52e6d50be8fb4fdb67ebc194266a809b31ae8efa1fba24e9";
        assert_eq!(parse_digest(hex).unwrap(), format!("sha256:{hex}"));
        assert_eq!(parse_digest(&format!("sha256:{hex}")).unwrap(), format!("sha256:{hex}"));
        assert!(parse_digest("sha256:../../etc").is_err());
        assert!(parse_digest(&hex.to_uppercase()).is_err());
        assert!(parse_digest("").is_err());
    }

    #[test]
    fn compression_detection_and_roundtrip() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let want = diff_id_of_reader(&data[..]).unwrap();

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(detect(&gz), Compression::Gzip);
        let r = decompress(io::Cursor::new(gz)).unwrap();
        assert_eq!(diff_id_of_reader(r).unwrap(), want);

        let zs = zstd::encode_all(&data[..], 1).unwrap();
        assert_eq!(detect(&zs), Compression::Zstd);
        let r = decompress(io::Cursor::new(zs)).unwrap();
        assert_eq!(diff_id_of_reader(r).unwrap(), want);

        let r = decompress(io::Cursor::new(data.clone())).unwrap();
        assert_eq!(diff_id_of_reader(r).unwrap(), want);
        // Tiny inputs (shorter than any magic) pass through unchanged.
        let r = decompress(io::Cursor::new(vec![0x1fu8])).unwrap();
        assert_eq!(diff_id_of_reader(r).unwrap(), diff_id_of_reader(&[0x1fu8][..]).unwrap());
    }

    /// Yields `n` bytes, then fails (or panics).
    struct Failing {
        left: usize,
        panic: bool,
    }

    impl Read for Failing {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            if self.left == 0 {
                assert!(!self.panic, "decoder panic (expected by the test)");
                return Err(io::Error::other("boom"));
            }
            let n = b.len().min(self.left);
            b[..n].fill(1);
            self.left -= n;
            Ok(n)
        }
    }

    #[test]
    fn pipelined_stream() {
        let data: Vec<u8> = (0..3 * PIPE_CHUNK + 123).map(|i| (i * 7 % 251) as u8).collect();
        let mut p = Pipelined::spawn(io::Cursor::new(data.clone())).unwrap();
        let (mut out, mut buf) = (Vec::new(), [0u8; 511]);
        loop {
            let n = p.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, data);
        assert_eq!(p.read(&mut buf).unwrap(), 0);
        let mut empty = Vec::new();
        Pipelined::spawn(io::empty()).unwrap().read_to_end(&mut empty).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn pipelined_errors_are_never_an_end() {
        for panic in [false, true] {
            let mut p = Pipelined::spawn(Failing { left: PIPE_CHUNK + 1000, panic }).unwrap();
            let mut v = Vec::new();
            let e = p.read_to_end(&mut v).unwrap_err();
            // A panic loses the chunk being filled; an error comes after what was read.
            assert_eq!(v.len(), if panic { PIPE_CHUNK } else { PIPE_CHUNK + 1000 });
            assert_eq!(e.to_string().contains("boom"), !panic, "{e}");
            assert!(p.read(&mut [0u8; 16]).is_err(), "a read after the error must fail too");
        }
        // A truncated gzip stream is an error, not a short layer.
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 13) as u8).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let r = decompress(io::Cursor::new(gz[..gz.len() - 10].to_vec())).unwrap();
        assert!(diff_id_of_reader(r).is_err());
    }
}
