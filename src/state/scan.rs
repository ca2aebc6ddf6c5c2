//! A forward-only JSON reader for state bodies too large to hold: it reads
//! a body a buffer at a time, knows the byte position of everything it
//! passes, and can hash or copy the bytes of a value on the way.
//!
//! serde_json over a `Read` takes its input one byte at a time and does not
//! say where a value starts or ends; a diff needs exactly that, to read
//! again only the resource instances that differ. So this reader walks the
//! few levels a state's views interpret (the top-level object, the resource
//! blocks, their instances, the outputs) and skips everything below them by
//! matching brackets outside strings, without validating it: bodies were
//! checked as JSON when written, and any text handed on from here (a key,
//! an index key, an instance) is parsed by serde_json.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::io::Read;

use md5::{Digest, Md5};

/// Why a body could not be walked.
#[derive(Debug)]
pub(super) enum ScanError {
    /// Reading the body failed.
    Read(std::io::Error),
    /// The body is not shaped as the walk expects (not a state, or not
    /// JSON); such a body holds nothing to show.
    Shape(&'static str),
}

impl From<std::io::Error> for ScanError {
    fn from(e: std::io::Error) -> Self {
        ScanError::Read(e)
    }
}

pub(super) type Scanned<T> = Result<T, ScanError>;

/// The bytes read at once.
const BUFFER_BYTES: usize = 256 * 1024;

/// A sink the bytes of a value go to while it is read, and where in the
/// buffer it starts taking them.
struct Tap<T> {
    sink: T,
    from: usize,
}

/// A key as the walk sees it: its text, or too long to be one it knows.
pub(super) enum Key {
    Text(String),
    Other,
}

impl Key {
    pub(super) fn is(&self, name: &str) -> bool {
        matches!(self, Key::Text(k) if k == name)
    }
}

/// The longest key text worth reading where the walk only looks for names
/// it knows, all short (escapes allow six bytes a character); a longer key
/// is skipped unread.
pub(super) const KNOWN_KEY_BYTES: usize = 256;

pub(super) struct Scanner<R> {
    reader: R,
    buf: Box<[u8]>,
    /// The next byte to read in `buf`.
    at: usize,
    /// How much of `buf` holds body bytes.
    len: usize,
    /// The body offset of `buf[0]`.
    base: u64,
    /// The MD5 of every byte read, when asked for.
    md5: Option<Md5>,
    /// The hash of the value being read, when one is being hashed.
    hash: Option<Tap<DefaultHasher>>,
    /// The copy of the value being read, with the most it may take.
    copy: Option<(Tap<Vec<u8>>, usize)>,
    /// A copy grew past its limit.
    overflowed: bool,
}

impl<R: Read> Scanner<R> {
    /// A reader of `reader`'s bytes; with `md5`, it also hashes them all
    /// ([`Scanner::finish_md5`]).
    pub(super) fn new(reader: R, md5: bool) -> Self {
        Scanner {
            reader,
            buf: vec![0; BUFFER_BYTES].into_boxed_slice(),
            at: 0,
            len: 0,
            base: 0,
            md5: md5.then(Md5::new),
            hash: None,
            copy: None,
            overflowed: false,
        }
    }

    /// The body offset of the next byte.
    pub(super) fn position(&self) -> u64 {
        self.base + self.at as u64
    }

    /// Reads the next buffer once `buf` is used up; false at the end. The
    /// bytes of `buf` go to the sinks first.
    fn fill(&mut self) -> Scanned<bool> {
        debug_assert_eq!(self.at, self.len);
        if let Some(tap) = &mut self.hash {
            tap.sink.write(&self.buf[tap.from..self.len]);
            tap.from = 0;
        }
        if let Some((tap, limit)) = &mut self.copy {
            let piece = &self.buf[tap.from..self.len];
            if tap.sink.len() + piece.len() > *limit {
                self.overflowed = true;
            } else {
                tap.sink.extend_from_slice(piece);
            }
            tap.from = 0;
        }
        self.base += self.len as u64;
        self.at = 0;
        self.len = 0;
        let n = loop {
            match self.reader.read(&mut self.buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        };
        self.len = n;
        if let Some(md5) = &mut self.md5 {
            md5.update(&self.buf[..n]);
        }
        Ok(n > 0)
    }

    fn peek_byte(&mut self) -> Scanned<Option<u8>> {
        if self.at == self.len && !self.fill()? {
            return Ok(None);
        }
        Ok(Some(self.buf[self.at]))
    }

    /// The next byte that is not whitespace, not consumed.
    pub(super) fn peek(&mut self) -> Scanned<Option<u8>> {
        loop {
            match self.peek_byte()? {
                Some(b' ' | b'\t' | b'\n' | b'\r') => self.at += 1,
                other => return Ok(other),
            }
        }
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Scanned<()> {
        if self.peek()? != Some(byte) {
            return Err(ScanError::Shape(what));
        }
        self.at += 1;
        Ok(())
    }

    /// Whether the next value is `null`, which is then consumed.
    pub(super) fn null(&mut self) -> Scanned<bool> {
        if self.peek()? != Some(b'n') {
            return Ok(false);
        }
        self.skip_value()?;
        Ok(true)
    }

    /// Enters an object.
    pub(super) fn begin_object(&mut self) -> Scanned<()> {
        self.expect(b'{', "expected an object")
    }

    /// Enters an array.
    pub(super) fn begin_array(&mut self) -> Scanned<()> {
        self.expect(b'[', "expected an array")
    }

    /// The next key of the object entered (its value is next), or `None`
    /// past its end; [`Key::Other`] when its text is longer than `limit`
    /// bytes. `first` is true until the first key.
    pub(super) fn next_key(&mut self, first: &mut bool, limit: usize) -> Scanned<Option<Key>> {
        if !self.more(first, b'}')? {
            return Ok(None);
        }
        let key = self.string(limit)?;
        self.expect(b':', "expected `:` after a key")?;
        Ok(Some(key))
    }

    /// Walks an array, or `null` as an empty one, calling `each` with the
    /// scanner at every element (which `each` must read or skip).
    pub(super) fn each_element<E: From<ScanError>>(
        &mut self,
        mut each: impl FnMut(&mut Self) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.null()? {
            return Ok(());
        }
        self.begin_array()?;
        let mut first = true;
        while self.next_element(&mut first)? {
            each(self)?;
        }
        Ok(())
    }

    /// Whether the array entered has another element, which is next.
    pub(super) fn next_element(&mut self, first: &mut bool) -> Scanned<bool> {
        self.more(first, b']')
    }

    fn more(&mut self, first: &mut bool, close: u8) -> Scanned<bool> {
        let next = self.peek()?;
        if next == Some(close) {
            self.at += 1;
            return Ok(false);
        }
        if !std::mem::replace(first, false) {
            if next != Some(b',') {
                return Err(ScanError::Shape("expected `,` between members"));
            }
            self.at += 1;
        }
        Ok(true)
    }

    /// A string value decoded, or [`Key::Other`] when its text is longer
    /// than `limit` bytes.
    fn string(&mut self, limit: usize) -> Scanned<Key> {
        if self.peek()? != Some(b'"') {
            return Err(ScanError::Shape("expected a string"));
        }
        match self.copy_value(limit)? {
            None => Ok(Key::Other),
            Some(text) => serde_json::from_slice(&text)
                .map(Key::Text)
                .map_err(|_| ScanError::Shape("a string is not valid JSON")),
        }
    }

    /// The text of the next value, or `None` (the value skipped) when it is
    /// longer than `limit` bytes.
    pub(super) fn copy_value(&mut self, limit: usize) -> Scanned<Option<Vec<u8>>> {
        self.peek()?;
        debug_assert!(self.copy.is_none(), "one copy at a time");
        self.copy = Some((
            Tap {
                sink: Vec::new(),
                from: self.at,
            },
            limit,
        ));
        self.overflowed = false;
        let skipped = self.skip_value();
        let (mut tap, limit) = self.copy.take().expect("copying");
        skipped?;
        let piece = &self.buf[tap.from..self.at];
        if self.overflowed || tap.sink.len() + piece.len() > limit {
            return Ok(None);
        }
        tap.sink.extend_from_slice(piece);
        Ok(Some(tap.sink))
    }

    /// Starts hashing the text from the next value on with `hasher`;
    /// returns where that value starts in the body.
    pub(super) fn start_hash(&mut self, hasher: DefaultHasher) -> Scanned<u64> {
        self.peek()?;
        debug_assert!(self.hash.is_none(), "one hash at a time");
        self.hash = Some(Tap {
            sink: hasher,
            from: self.at,
        });
        Ok(self.position())
    }

    /// Stops hashing: the hash of the text since [`Scanner::start_hash`],
    /// and where that text ends in the body.
    pub(super) fn end_hash(&mut self) -> (u64, u64) {
        let mut tap = self.hash.take().expect("hashing");
        tap.sink.write(&self.buf[tap.from..self.at]);
        (tap.sink.finish(), self.position())
    }

    /// Skips the next value, hashing its text with `hasher`: the hash, and
    /// where the value starts and ends in the body.
    pub(super) fn hash_value(&mut self, hasher: DefaultHasher) -> Scanned<(u64, u64, u64)> {
        let start = self.start_hash(hasher)?;
        self.skip_value()?;
        let (hash, end) = self.end_hash();
        Ok((hash, start, end))
    }

    /// Skips the next value, whatever it is.
    pub(super) fn skip_value(&mut self) -> Scanned<()> {
        match self.peek()? {
            None => Err(ScanError::Shape("the body ends early")),
            Some(b'"') => self.skip_string(),
            Some(b'{' | b'[') => self.skip_nested(),
            Some(b'}' | b']' | b',' | b':') => Err(ScanError::Shape("expected a value")),
            Some(_) => self.skip_scalar(),
        }
    }

    /// Skips a string from its opening quote.
    fn skip_string(&mut self) -> Scanned<()> {
        self.at += 1;
        loop {
            if self.at == self.len && !self.fill()? {
                return Err(ScanError::Shape("a string does not end"));
            }
            let rest = &self.buf[self.at..self.len];
            match rest.iter().position(|&b| b == b'"' || b == b'\\') {
                None => self.at = self.len,
                Some(i) => {
                    let quote = rest[i] == b'"';
                    self.at += i + 1;
                    if quote {
                        return Ok(());
                    }
                    // An escape: the byte after the backslash is not the
                    // end, wherever it lies.
                    if self.at == self.len && !self.fill()? {
                        return Err(ScanError::Shape("a string does not end"));
                    }
                    self.at += 1;
                }
            }
        }
    }

    /// Skips an object or array from its opening bracket to the bracket
    /// that closes it.
    fn skip_nested(&mut self) -> Scanned<()> {
        let mut depth = 0usize;
        loop {
            if self.at == self.len && !self.fill()? {
                return Err(ScanError::Shape("an object or array does not end"));
            }
            let rest = &self.buf[self.at..self.len];
            match rest
                .iter()
                .position(|&b| matches!(b, b'"' | b'{' | b'[' | b'}' | b']'))
            {
                None => self.at = self.len,
                Some(i) => {
                    self.at += i;
                    match self.buf[self.at] {
                        b'"' => self.skip_string()?,
                        b'{' | b'[' => {
                            depth += 1;
                            self.at += 1;
                        }
                        _ => {
                            depth -= 1;
                            self.at += 1;
                            if depth == 0 {
                                return Ok(());
                            }
                        }
                    }
                }
            }
        }
    }

    /// Skips a number, `true`, `false` or `null`.
    fn skip_scalar(&mut self) -> Scanned<()> {
        loop {
            match self.peek_byte()? {
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') => return Ok(()),
                Some(_) => self.at += 1,
            }
        }
    }

    /// Checks that nothing but whitespace follows the top-level value.
    pub(super) fn end(&mut self) -> Scanned<()> {
        match self.peek()? {
            None => Ok(()),
            Some(_) => Err(ScanError::Shape("text follows the top-level value")),
        }
    }

    /// Reads what is left of the body, and returns the hex MD5 of all of
    /// it (`None` when not asked for at [`Scanner::new`]).
    pub(super) fn finish_md5(mut self) -> Scanned<Option<String>> {
        self.at = self.len;
        while self.fill()? {
            self.at = self.len;
        }
        Ok(self.md5.map(|m| crate::stores::payload::hex(&m.finalize())))
    }
}

/// A name folded as Go's `encoding/json` compares member names, which
/// Terraform and OpenTofu decode states with: case-insensitively, with
/// `ſ` (U+017F) taken as `s` and the Kelvin sign as `k`. A name of ASCII
/// without capitals, as Terraform writes every member, is its own fold.
pub(crate) fn go_folded(name: &str) -> std::borrow::Cow<'_, str> {
    if name
        .bytes()
        .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
    {
        return std::borrow::Cow::Borrowed(name);
    }
    name.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::go_folded;

    /// A name of ASCII without capitals is its own fold, as the full fold
    /// makes it; the others fold as Go's decoder compares them.
    #[test]
    fn names_fold_as_gos_decoder_compares_them() {
        let full = |name: &str| -> String {
            name.chars()
                .flat_map(char::to_uppercase)
                .flat_map(char::to_lowercase)
                .collect()
        };
        let ascii: String = (0u8..128)
            .map(char::from)
            .filter(|c| !c.is_ascii_uppercase())
            .collect();
        for name in ["serial", "index_key", "check_results", "a-b.0", "", &ascii] {
            assert!(
                matches!(go_folded(name), std::borrow::Cow::Borrowed(_)),
                "{name}"
            );
            assert_eq!(go_folded(name), full(name));
        }
        for (name, folded) in [
            ("SERIAL", "serial"),
            ("\u{17f}erial", "serial"),
            ("\u{212a}ey", "key"),
            ("Outputs", "outputs"),
            ("ID", "id"),
        ] {
            assert_eq!(go_folded(name), folded);
        }
    }
}
