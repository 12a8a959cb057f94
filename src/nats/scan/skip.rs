//! Values nobody reads, stepped over after a check of their syntax (as serde's `IgnoredAny`):
//! no UTF-8 check of their strings, no recursion, at most [`MAX_DEPTH`] levels.

use super::{Cursor, Res, MAX_DEPTH};

impl<'a> Cursor<'a, '_> {
    /// A number, checked for syntax only.
    fn skip_number(&mut self) -> Res<()> {
        let b = self.b;
        let digits = |i: &mut usize| {
            let from = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i - from
        };
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let int_from = i;
        let n = digits(&mut i);
        let ok = n > 0 && (b[int_from] != b'0' || n == 1) && {
            let frac = b.get(i) != Some(&b'.') || {
                i += 1;
                digits(&mut i) > 0
            };
            frac && (!matches!(b.get(i), Some(b'e' | b'E')) || {
                i += 1;
                if let Some(b'+' | b'-') = b.get(i) {
                    i += 1;
                }
                digits(&mut i) > 0
            })
        };
        self.i = i;
        if ok {
            Ok(())
        } else {
            Err(self.err("invalid number"))
        }
    }

    /// Steps over one value after checking its syntax (not its strings' UTF-8). Nested values
    /// are walked with a stack of bits, one per level (1 = object), not recursion: at most
    /// [`MAX_DEPTH`] levels.
    pub(super) fn skip(&mut self) -> Res<()> {
        let mut stack: u128 = 0;
        let mut depth = 0usize;
        loop {
            // A value.
            match self.peek()? {
                b'"' => match self.short_string() {
                    Some((_, len)) => self.i += len + 2,
                    None => {
                        self.i += 1;
                        self.string_end()?;
                    }
                },
                b'{' | b'[' => {
                    let object = self.b[self.i] == b'{';
                    if depth == MAX_DEPTH {
                        return Err(self.err("nested too deep"));
                    }
                    self.i += 1;
                    stack = (stack << 1) | u128::from(object);
                    depth += 1;
                    let close = if object { b'}' } else { b']' };
                    if !self.empty(close)? {
                        if object {
                            self.skip_key()?;
                        }
                        continue;
                    }
                    stack >>= 1;
                    depth -= 1;
                }
                b'n' => self.literal(b"null")?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'-' | b'0'..=b'9' => self.skip_number()?,
                _ => return Err(self.err("expected a value")),
            }
            // After a value: the next element of its container, or the container's end (and
            // then after the container, the same again).
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let object = stack & 1 == 1;
                if self.more(if object { b'}' } else { b']' })? {
                    if object {
                        self.skip_key()?;
                    }
                    break;
                }
                stack >>= 1;
                depth -= 1;
            }
        }
    }

    /// A key of a skipped object and its colon (not UTF-8 checked, as serde's `IgnoredAny`).
    fn skip_key(&mut self) -> Res<()> {
        self.eat(b'"')?;
        self.string_end()?;
        self.eat(b':')
    }

    /// The raw bytes of the next value (checked for syntax).
    pub(super) fn raw_value(&mut self) -> Res<&'a [u8]> {
        self.ws();
        let start = self.i;
        self.skip()?;
        Ok(&self.b[start..self.i])
    }
}
