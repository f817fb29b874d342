//! PAX extended headers read by their record lengths, beside the tar crate.
//!
//! A PAX record is `<length> <key>=<value>\n`, and its length is what lets a value hold any
//! byte, newlines included (a binary xattr such as `security.capability` or an ACL can). The
//! tar crate (0.4.46) splits the header's body at newlines instead: such a record reads as
//! malformed, and the tail of its value as records of their own. So the unpacker watches the
//! stream the crate reads ([`Tap`]): every extension header (`x`, `g`, `L`, `K`) that starts
//! on a block boundary where a header may stand is noted with its position, and the body of
//! an `x` header is kept. For each entry the crate yields, the chain of extension headers
//! from the end of the previous entry's data up to the entry's own header is walked
//! ([`Found::chain`]); the `x` body found there is parsed here ([`parse`]) and its records
//! stand instead of the crate's reading of them.
//!
//! Only positions where a header can be are looked at: not inside an entry's data (the
//! unpacker says where that ends, [`Found::skip_to`]) nor inside an extension header's body.
//! A block that merely looks like a header elsewhere is never part of a chain, because a
//! chain must start exactly where the previous entry's data ends and step from header to
//! header by their sizes.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::rc::Rc;

const BLOCK: u64 = 512;

/// Bodies of `x` headers larger than this are not kept (the entry then falls back to the
/// tar crate's reading of its records).
pub const MAX_BODY: u64 = 4 << 20;

/// An extension header seen in the stream.
#[derive(Debug)]
pub struct Ext {
    pub kind: u8,
    pub size: u64,
    /// The whole body of an `x` header, once read (None: too large, or not read yet).
    pub body: Option<Vec<u8>>,
}

/// What the tap found, shared with the unpacker.
#[derive(Debug, Default)]
pub struct Found {
    ext: BTreeMap<u64, Ext>,
    /// No header is looked for before this position (data, or an extension body).
    skip_until: u64,
    /// An `x` body being kept: its header's position, where the body ends, and up to where
    /// it has been kept.
    capture: Option<(u64, u64, u64)>,
}

/// The extension headers standing before one entry.
#[derive(Debug, Default, PartialEq)]
pub struct Chain {
    /// The body of its `x` header: Some(None) when there is one whose body was not kept.
    pub pax: Option<Option<Vec<u8>>>,
    /// A GNU long name (`L`) or long link (`K`) header is part of it.
    pub long_name: bool,
    pub long_link: bool,
}

impl Found {
    /// The entry whose header is at `header` yields nothing before `data_end` to look at (its
    /// data); everything noted before it is forgotten.
    pub fn skip_to(&mut self, data_end: u64) {
        self.skip_until = self.skip_until.max(data_end);
        self.ext = self.ext.split_off(&data_end);
        if self.capture.is_some_and(|(_, end, _)| end <= data_end) {
            self.capture = None;
        }
    }

    /// The extension headers from `from` (where the previous entry's data ended) up to the
    /// entry header at `header`, if they form an unbroken chain (None otherwise).
    pub fn chain(&mut self, from: u64, header: u64) -> Option<Chain> {
        let mut c = Chain::default();
        let mut pos = from;
        while pos < header {
            let e = self.ext.get_mut(&pos)?;
            match e.kind {
                b'x' => c.pax = Some(e.body.take()),
                b'L' => c.long_name = true,
                b'K' => c.long_link = true,
                _ => {}
            }
            pos = pos.checked_add(BLOCK + e.size.div_ceil(BLOCK) * BLOCK)?;
        }
        (pos == header).then_some(c)
    }

    fn header(&mut self, pos: u64, block: &[u8]) {
        if pos < self.skip_until {
            return;
        }
        let Some((kind, size)) = ext_header(block) else { return };
        let body_end = pos + BLOCK + size;
        // Its body is not a place for headers.
        self.skip_until = pos + BLOCK + size.div_ceil(BLOCK) * BLOCK;
        let keep = kind == b'x' && size <= MAX_BODY;
        self.ext.insert(pos, Ext { kind, size, body: keep.then(|| Vec::with_capacity(size as usize)) });
        self.capture = keep.then_some((pos, body_end, pos + BLOCK));
    }

    /// Keeps what `data` (read at `start`) holds of the body being kept.
    fn body_bytes(&mut self, start: u64, data: &[u8]) {
        let Some((at, end, kept)) = self.capture else { return };
        let (lo, hi) = (start.max(kept), (start + data.len() as u64).min(end));
        if lo < hi {
            if let Some(b) = self.ext.get_mut(&at).and_then(|e| e.body.as_mut()) {
                b.extend_from_slice(&data[(lo - start) as usize..(hi - start) as usize]);
            }
            self.capture = Some((at, end, hi));
        }
        if hi >= end {
            self.capture = None;
        }
    }
}

/// The type and body size of a valid extension header block (checksum, `ustar` magic).
fn ext_header(b: &[u8]) -> Option<(u8, u64)> {
    let kind = b[156];
    if !matches!(kind, b'x' | b'g' | b'L' | b'K') || &b[257..262] != b"ustar" {
        return None;
    }
    let want = octal(&b[148..156])?;
    let sum: u64 =
        b.iter().enumerate().map(|(i, &c)| if (148..156).contains(&i) { 32 } else { c as u64 }).sum();
    if sum != want {
        return None;
    }
    let size = if b[124] & 0x80 != 0 {
        // base-256
        b[125..136].iter().try_fold(0u64, |acc, &c| acc.checked_mul(256).map(|v| v | c as u64))?
    } else {
        octal(&b[124..136])?
    };
    Some((kind, size))
}

fn octal(f: &[u8]) -> Option<u64> {
    let s: Vec<u8> =
        f.iter().copied().skip_while(|&c| c == b' ').take_while(|&c| c != 0 && c != b' ').collect();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&s).ok()?, 8).ok()
}

/// Counts the bytes read through it and notes extension headers and `x` bodies ([`Found`]).
pub struct Tap<R> {
    pub inner: R,
    pub n: Rc<std::cell::Cell<u64>>,
    pub found: Rc<RefCell<Found>>,
    /// A header block split across reads: its bytes so far.
    partial: Vec<u8>,
}

impl<R> Tap<R> {
    pub fn new(inner: R, n: Rc<std::cell::Cell<u64>>, found: Rc<RefCell<Found>>) -> Tap<R> {
        Tap { inner, n, found, partial: Vec::new() }
    }

    fn saw(&mut self, start: u64, data: &[u8]) {
        let mut f = self.found.borrow_mut();
        let end = start + data.len() as u64;
        let mut pos = start;
        if !self.partial.is_empty() {
            let need = (BLOCK as usize - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..need]);
            pos += need as u64;
            if self.partial.len() == BLOCK as usize {
                let block = std::mem::take(&mut self.partial);
                f.header(pos - BLOCK, &block);
            }
        }
        // Block boundaries within this read, from the first one not before `pos`. The body
        // being kept takes the bytes before each header (a header may start another).
        let mut b = pos.div_ceil(BLOCK) * BLOCK;
        while b < end {
            if b < f.skip_until {
                b = f.skip_until.div_ceil(BLOCK) * BLOCK;
                continue;
            }
            let i = (b - start) as usize;
            f.body_bytes(start, &data[..i]);
            if b + BLOCK <= end {
                f.header(b, &data[i..i + BLOCK as usize]);
            } else {
                self.partial = data[i..].to_vec();
            }
            b += BLOCK;
        }
        f.body_bytes(start, data);
    }
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let start = self.n.get();
        self.saw(start, &buf[..n]);
        self.n.set(start + n as u64);
        Ok(n)
    }
}

/// PAX records: (key, value) pairs in their order.
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// The records of a PAX header body, by their lengths.
pub fn parse(body: &[u8]) -> Result<Records, String> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        if rest.iter().all(|&c| c == 0) {
            break; // padding some writers leave
        }
        let sp = rest.iter().position(|&c| c == b' ').ok_or("a record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a record whose length is not a number")?;
        if len < sp + 3 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(format!("a record whose length ({len}) does not fit it"));
        }
        let kv = &rest[sp + 1..len - 1];
        let eq = kv.iter().position(|&c| c == b'=').ok_or("a record without '='")?;
        out.push((kv[..eq].to_vec(), kv[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(k: &str, v: &[u8]) -> Vec<u8> {
        let body = [b" ", k.as_bytes(), b"=", v, b"\n"].concat();
        let mut len = body.len() + 1;
        while len.to_string().len() + body.len() != len {
            len += 1;
        }
        [len.to_string().into_bytes(), body].concat()
    }

    #[test]
    fn records_are_read_by_their_lengths() {
        let caps = b"\x01\x00\x00\x02\x02\x00\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
        let body =
            [rec("path", b"a\nb"), rec("SCHILY.xattr.security.capability", caps), rec("size", b"7")].concat();
        let r = parse(&body).unwrap();
        assert_eq!(r[0], (b"path".to_vec(), b"a\nb".to_vec()));
        assert_eq!(r[1].1, caps.to_vec());
        assert_eq!(r[2], (b"size".to_vec(), b"7".to_vec()));
        // A forged record inside a value is part of the value.
        let inner = rec("linkpath", b"/etc/evil");
        let r = parse(&rec("comment", &[b"x\n".as_slice(), &inner].concat())).unwrap();
        assert_eq!(r.len(), 1);
        assert!(parse(b"5 a=b\n").is_err());
        assert!(parse(b"99 a=b\n").is_err());
        assert!(parse(b"x a=b\n").is_err());
        assert_eq!(parse(&[rec("a", b"b"), vec![0; 20]].concat()).unwrap().len(), 1);
    }

    fn header(kind: u8, size: u64) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(b"name");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u64 =
            h.iter().enumerate().map(|(i, &c)| if (148..156).contains(&i) { 32 } else { c as u64 }).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn padded(mut v: Vec<u8>) -> Vec<u8> {
        v.resize(v.len().div_ceil(512) * 512, 0);
        v
    }

    /// Reads `stream` through a tap in reads of `step` bytes.
    fn tap_all(stream: &[u8], step: usize, skips: &[(u64, u64)]) -> Rc<RefCell<Found>> {
        let found = Rc::new(RefCell::new(Found::default()));
        let mut t = Tap::new(stream, Rc::new(std::cell::Cell::new(0)), found.clone());
        let mut buf = vec![0u8; step];
        loop {
            let pos = t.n.get();
            for &(at, to) in skips {
                if pos == at {
                    found.borrow_mut().skip_to(to);
                }
            }
            if t.read(&mut buf).unwrap() == 0 {
                break;
            }
        }
        found
    }

    #[test]
    fn the_tap_finds_the_chain_before_an_entry_whatever_the_read_sizes() {
        let body = rec("SCHILY.xattr.user.a", b"1\n2");
        // x header + body, L header + body, the entry's header, its data (holding a fake x).
        let fake = header(b'x', 100);
        let stream = [
            header(b'x', body.len() as u64),
            padded(body.clone()),
            header(b'L', 600),
            padded(vec![b'n'; 600]),
            header(b'0', 1024),
            padded([fake.clone(), vec![0; 512]].concat()),
            vec![0; 1024],
        ]
        .concat();
        let h = 512 * 5;
        for step in [1, 7, 512, 4096, 1 << 20] {
            let f = tap_all(&stream, step, &[]);
            let c = f.borrow_mut().chain(0, h).expect("chain");
            assert_eq!(
                c,
                Chain { pax: Some(Some(body.clone())), long_name: true, long_link: false },
                "{step}"
            );
        }
        // Told where the entry's data ends, the fake header in it is not noted.
        let f = tap_all(&stream, 512, &[(h + 512, h + 512 + 1024)]);
        assert!(f.borrow().ext.keys().all(|&p| p < h));
        // A chain must start where the previous data ended.
        let f = tap_all(&stream, 512, &[]);
        assert_eq!(f.borrow_mut().chain(512, h), None);
    }
}
