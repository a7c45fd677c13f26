//! HPACK (RFC 7541), the header compression of skiff's HTTP/2 server.
//!
//! [`Decoder`] turns one header block (a HEADERS frame's payload with its
//! CONTINUATION frames joined) into name/value pairs and keeps the peer's
//! dynamic table in step; it implements the whole RFC, Huffman strings and
//! table size updates included. [`Encoder`] writes our header blocks
//! without a dynamic table and without Huffman coding: that costs a few
//! bytes per response and saves the table lookups and bit packing on every
//! one, and the request path is measured in instructions.
//!
//! Both sides work on raw bytes. Whether a name is lowercase, a pseudo-header
//! is allowed, or a value holds forbidden characters is HTTP/2's business
//! (RFC 9113 §8.2), checked by the connection, not here.

use std::collections::VecDeque;
use std::fmt;

/// A decoding failure: the connection must end with COMPRESSION_ERROR.
///
/// After one, the decoder's dynamic table may no longer match the peer's,
/// so no later block on the connection can be trusted (RFC 9113 §4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError(pub(crate) &'static str);

impl DecodeError {
    const INDEX_ZERO: DecodeError = DecodeError("index 0 does not name a table entry");
    const INDEX_OUT_OF_RANGE: DecodeError = DecodeError("index out of range");
    const SIZE_UPDATE_TOO_LARGE: DecodeError =
        DecodeError("dynamic table size update above the advertised limit");
    const SIZE_UPDATE_AFTER_FIELD: DecodeError =
        DecodeError("dynamic table size update after the block's first field");
    const TRUNCATED_INTEGER: DecodeError = DecodeError("integer runs past the end of the block");
    const INTEGER_OVERFLOW: DecodeError = DecodeError("integer does not fit in 32 bits");
    const INTEGER_TOO_LONG: DecodeError = DecodeError("integer longer than 5 continuation bytes");
    const TRUNCATED_STRING: DecodeError = DecodeError("block ends where a string should start");
    const STRING_PAST_END: DecodeError = DecodeError("string runs past the end of the block");
    const HUFFMAN_EOS: DecodeError = DecodeError("Huffman string contains the EOS symbol");
    const HUFFMAN_PADDING: DecodeError =
        DecodeError("Huffman padding longer than 7 bits or not all ones");
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HPACK decoding failed: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// How [`Decoder::decode`] ended when the block itself was valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Every field was handed to the callback.
    Complete,
    /// The callback refused a field; the rest of the block still updated
    /// the dynamic table but reached no callback.
    Stopped,
}

/// The bytes an entry costs beyond its name and value (RFC 7541 §4.1), so
/// that a table of many empty fields still has a bounded size.
const ENTRY_OVERHEAD: usize = 32;

/// The static table (RFC 7541 Appendix A); index 1 is the first element.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The static table index of `:status`, the name of every status field
/// that has no static entry of its own.
const STATUS_NAME_INDEX: usize = 8;

/// The first static table index whose name is `name`, if any.
///
/// Grouped by length, so a name costs one jump and at most six
/// comparisons rather than a scan of all 61 entries.
fn static_name_index(name: &[u8]) -> Option<usize> {
    let index = match name.len() {
        3 => match name {
            b"age" => 21,
            b"via" => 60,
            _ => return None,
        },
        4 => match name {
            b"date" => 33,
            b"etag" => 34,
            b"from" => 37,
            b"host" => 38,
            b"link" => 45,
            b"vary" => 59,
            _ => return None,
        },
        5 => match name {
            b":path" => 4,
            b"allow" => 22,
            b"range" => 50,
            _ => return None,
        },
        6 => match name {
            b"accept" => 19,
            b"cookie" => 32,
            b"expect" => 35,
            b"server" => 54,
            _ => return None,
        },
        7 => match name {
            b":method" => 2,
            b":scheme" => 6,
            b":status" => 8,
            b"expires" => 36,
            b"referer" => 51,
            b"refresh" => 52,
            _ => return None,
        },
        8 => match name {
            b"if-match" => 39,
            b"if-range" => 42,
            b"location" => 46,
            _ => return None,
        },
        10 => match name {
            b":authority" => 1,
            b"set-cookie" => 55,
            b"user-agent" => 58,
            _ => return None,
        },
        11 => match name {
            b"retry-after" => 53,
            _ => return None,
        },
        12 => match name {
            b"content-type" => 31,
            b"max-forwards" => 47,
            _ => return None,
        },
        13 => match name {
            b"accept-ranges" => 18,
            b"authorization" => 23,
            b"cache-control" => 24,
            b"content-range" => 30,
            b"if-none-match" => 41,
            b"last-modified" => 44,
            _ => return None,
        },
        14 => match name {
            b"accept-charset" => 15,
            b"content-length" => 28,
            _ => return None,
        },
        15 => match name {
            b"accept-encoding" => 16,
            b"accept-language" => 17,
            _ => return None,
        },
        16 => match name {
            b"content-encoding" => 26,
            b"content-language" => 27,
            b"content-location" => 29,
            b"www-authenticate" => 61,
            _ => return None,
        },
        17 => match name {
            b"if-modified-since" => 40,
            b"transfer-encoding" => 57,
            _ => return None,
        },
        18 => match name {
            b"proxy-authenticate" => 48,
            _ => return None,
        },
        19 => match name {
            b"content-disposition" => 25,
            b"if-unmodified-since" => 43,
            b"proxy-authorization" => 49,
            _ => return None,
        },
        25 => match name {
            b"strict-transport-security" => 56,
            _ => return None,
        },
        27 => match name {
            b"access-control-allow-origin" => 20,
            _ => return None,
        },
        _ => return None,
    };
    Some(index)
}

/// First-byte patterns of the field representations (RFC 7541 §6).
const INDEXED: u8 = 0x80;
const WITH_INDEXING: u8 = 0x40;
const SIZE_UPDATE: u8 = 0x20;
const NEVER_INDEXED: u8 = 0x10;
const WITHOUT_INDEXING: u8 = 0x00;
/// The H bit of a string literal's length byte.
const HUFFMAN_CODED: u8 = 0x80;

/// Decodes the header blocks of one connection's peer.
///
/// One per connection: the dynamic table carries state from block to
/// block, so every block must pass through it, in order.
pub(crate) struct Decoder {
    table: DynamicTable,
    /// The SETTINGS_HEADER_TABLE_SIZE we advertise: no size update may
    /// exceed it.
    max_table_size: usize,
    /// Huffman-decoded names and values, reused so that decoding a field
    /// allocates nothing once the buffers have grown to the longest seen.
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

/// The most scratch capacity a decoder keeps between blocks: ample for
/// common header values (cookies run to a few KiB), while a longer one is
/// decoded in a buffer freed after its block, so that a connection does
/// not hold on to the largest value it ever saw.
const SCRATCH_KEPT: usize = 16 * 1024;

impl Decoder {
    /// `max_table_size`: the SETTINGS_HEADER_TABLE_SIZE we advertise (4096).
    ///
    /// The table starts at that size and the peer may shrink it, or grow it
    /// back, with a size update at the start of any block (§4.2). A limit
    /// below the protocol's default of 4096 would reject a peer that sent
    /// headers before it saw our SETTINGS.
    pub(crate) fn new(max_table_size: usize) -> Decoder {
        Decoder {
            table: DynamicTable::new(max_table_size),
            max_table_size,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// Decodes one complete header block (HEADERS + CONTINUATION payloads
    /// joined), calling `field(name, value, never_indexed)` for each field
    /// in order. `never_indexed` marks a literal the peer sent as "never
    /// indexed" (§6.2.3), which an intermediary must forward the same way
    /// (§7.1.3).
    ///
    /// Names and values are raw bytes, Huffman already decoded. When `field`
    /// returns `Err(())` (a header list limit, say), decoding goes on to
    /// the end of the block without calling it again, so that the table
    /// stays in step with the peer's for the connection's later blocks, and
    /// returns [`Decoded::Stopped`].
    pub(crate) fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8], bool) -> Result<(), ()>,
    ) -> Result<Decoded, DecodeError> {
        let Decoder {
            table,
            max_table_size,
            name_buf,
            value_buf,
        } = self;
        let mut input = Reader { rest: block };
        let mut stopped = false;
        let mut deliver = |name: &[u8], value: &[u8], never_indexed: bool| {
            if !stopped && field(name, value, never_indexed).is_err() {
                stopped = true;
            }
        };
        let mut in_fields = false;
        while let Some(first) = input.byte() {
            if first & INDEXED != 0 {
                // §6.1: the whole field from a table.
                let index = input.integer(first, 7)?;
                let (name, value) = table.field(index)?;
                deliver(name, value, false);
            } else if first & WITH_INDEXING != 0 {
                // §6.2.1: a literal the table keeps. Its bytes are copied
                // before anything is evicted, since its name may be that of
                // an entry the insertion evicts (§4.4).
                let bytes = table.take_spare();
                let name = read_name(&mut input, first, 6, table, name_buf)?;
                let value = read_string(&mut input, value_buf)?;
                let entry = Entry::new(bytes, name, value);
                let (name, value) = entry.name_value();
                deliver(name, value, false);
                table.insert(entry);
            } else if first & SIZE_UPDATE != 0 {
                // §6.3, allowed only before the block's first field (§4.2).
                if in_fields {
                    return Err(DecodeError::SIZE_UPDATE_AFTER_FIELD);
                }
                let size = input.integer(first, 5)?;
                if size > *max_table_size {
                    return Err(DecodeError::SIZE_UPDATE_TOO_LARGE);
                }
                table.resize(size);
                continue;
            } else {
                // §6.2.2 and §6.2.3: without indexing, and never indexed
                // (the 0x10 bit), which the caller passes on.
                let name = read_name(&mut input, first, 4, table, name_buf)?;
                let value = read_string(&mut input, value_buf)?;
                deliver(name, value, first & NEVER_INDEXED != 0);
            }
            in_fields = true;
        }
        for scratch in [name_buf, value_buf] {
            if scratch.capacity() > SCRATCH_KEPT {
                *scratch = Vec::new();
            }
        }
        Ok(if stopped {
            Decoded::Stopped
        } else {
            Decoded::Complete
        })
    }
}

/// Reads a literal field's name: from a table when `first`'s index is not
/// zero, else from the string literal that follows.
#[inline]
fn read_name<'a: 'r, 'r>(
    input: &mut Reader<'a>,
    first: u8,
    prefix_bits: u32,
    table: &'r DynamicTable,
    scratch: &'r mut Vec<u8>,
) -> Result<&'r [u8], DecodeError> {
    match input.integer(first, prefix_bits)? {
        0 => read_string(input, scratch),
        index => Ok(table.field(index)?.0),
    }
}

/// Reads a string literal (§5.2): a raw one is borrowed from the block, a
/// Huffman one is decoded into `scratch`.
#[inline]
fn read_string<'a: 'r, 'r>(
    input: &mut Reader<'a>,
    scratch: &'r mut Vec<u8>,
) -> Result<&'r [u8], DecodeError> {
    let first = input.byte().ok_or(DecodeError::TRUNCATED_STRING)?;
    let len = input.integer(first, 7)?;
    let raw = input.take(len).ok_or(DecodeError::STRING_PAST_END)?;
    if first & HUFFMAN_CODED == 0 {
        return Ok(raw);
    }
    scratch.clear();
    decode_huffman(raw, scratch)?;
    Ok(scratch)
}

/// The unread rest of a header block.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    #[inline]
    fn byte(&mut self) -> Option<u8> {
        let (&byte, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(byte)
    }

    #[inline]
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.rest.split_at_checked(len)?;
        self.rest = rest;
        Some(taken)
    }

    /// Reads the integer (§5.1) whose `prefix_bits`-bit prefix ends
    /// `first`, the byte just read.
    ///
    /// Values are capped at `u32::MAX` and at 5 continuation bytes, enough
    /// for any 32-bit value: every index, length and table size a peer may
    /// honestly send is far smaller, and the caps keep the arithmetic
    /// from overflowing on hostile input (§5.1 lets a decoder set them).
    #[inline]
    fn integer(&mut self, first: u8, prefix_bits: u32) -> Result<usize, DecodeError> {
        let prefix_max = (1u8 << prefix_bits) - 1;
        let prefix = first & prefix_max;
        if prefix < prefix_max {
            Ok(usize::from(prefix))
        } else {
            self.continued_integer(prefix_max)
        }
    }

    /// The rest of [`Reader::integer`] when the prefix is all ones: the
    /// continuation bytes, 7 bits each, least significant first.
    fn continued_integer(&mut self, prefix_max: u8) -> Result<usize, DecodeError> {
        /// 5 continuation bytes cover 32 bits.
        const MAX_CONTINUATION_SHIFT: u32 = 28;
        let mut value = u64::from(prefix_max);
        let mut shift = 0;
        loop {
            let byte = self.byte().ok_or(DecodeError::TRUNCATED_INTEGER)?;
            value += u64::from(byte & 0x7f) << shift;
            if value > u64::from(u32::MAX) {
                return Err(DecodeError::INTEGER_OVERFLOW);
            }
            if byte & 0x80 == 0 {
                return usize::try_from(value).map_err(|_| DecodeError::INTEGER_OVERFLOW);
            }
            shift += 7;
            if shift > MAX_CONTINUATION_SHIFT {
                return Err(DecodeError::INTEGER_TOO_LONG);
            }
        }
    }
}

/// The peer's dynamic table (RFC 7541 §2.3.2, §4), newest entry first.
struct DynamicTable {
    entries: VecDeque<Entry>,
    /// The sum of the entries' sizes, name + value + 32 each.
    size: usize,
    /// The size the peer last set (or the advertised limit, at first).
    max_size: usize,
    /// The buffer of an evicted entry, for the next insertion to fill:
    /// once the table is full, every insertion evicts, and reusing the
    /// largest evicted buffer saves an allocation and a free per insertion.
    spare: Vec<u8>,
}

/// One dynamic table entry: name and value in one allocation.
struct Entry {
    bytes: Vec<u8>,
    name_len: usize,
}

impl Entry {
    /// Fills `bytes` (a recycled buffer, or an empty one) with the field.
    fn new(mut bytes: Vec<u8>, name: &[u8], value: &[u8]) -> Entry {
        bytes.clear();
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(value);
        Entry {
            bytes,
            name_len: name.len(),
        }
    }

    #[inline]
    fn name_value(&self) -> (&[u8], &[u8]) {
        // `new` wrote the name first, so `name_len <= bytes.len()`.
        self.bytes.split_at(self.name_len)
    }

    fn size(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

impl DynamicTable {
    fn new(max_size: usize) -> DynamicTable {
        DynamicTable {
            entries: VecDeque::new(),
            size: 0,
            max_size,
            spare: Vec::new(),
        }
    }

    /// The field at `index` in the static-then-dynamic index space (§2.3.3).
    #[inline]
    fn field(&self, index: usize) -> Result<(&[u8], &[u8]), DecodeError> {
        let Some(position) = index.checked_sub(1) else {
            return Err(DecodeError::INDEX_ZERO);
        };
        if let Some(&(name, value)) = STATIC_TABLE.get(position) {
            return Ok((name, value));
        }
        // `position` is past the static table, so this cannot underflow.
        self.entries
            .get(position - STATIC_TABLE.len())
            .map(Entry::name_value)
            .ok_or(DecodeError::INDEX_OUT_OF_RANGE)
    }

    fn take_spare(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.spare)
    }

    /// Adds `entry` as index 62, evicting the oldest entries to make room;
    /// an entry larger than the whole table empties it and is not added
    /// (§4.4).
    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        match self.max_size.checked_sub(size) {
            Some(room_for_others) => {
                self.evict_to(room_for_others);
                self.size += size;
                self.entries.push_front(entry);
            }
            None => {
                self.evict_to(0);
                self.recycle(entry.bytes);
            }
        }
    }

    /// Applies a dynamic table size update (§4.3).
    fn resize(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            let Some(oldest) = self.entries.pop_back() else {
                break;
            };
            self.size -= oldest.size();
            self.recycle(oldest.bytes);
        }
    }

    /// Keeps the larger of `bytes` and the current spare, unless `bytes`
    /// is larger than the table could hold, so that a connection keeps at
    /// most one table's worth of spare memory.
    fn recycle(&mut self, bytes: Vec<u8>) {
        if bytes.capacity() > self.spare.capacity() && bytes.capacity() <= self.max_size {
            self.spare = bytes;
        }
    }
}

/// Encodes the header blocks we send on one connection.
///
/// It never inserts into the peer's dynamic table: each field is a literal
/// "without indexing" (or "never indexed"), its name indexed from the static
/// table when it is there, its value a plain string. Indexing would save
/// bytes on fields repeated from response to response, at the cost of a
/// table search per field and a table per connection: here the
/// instructions matter more than the bytes.
pub(crate) struct Encoder {
    /// Whether the next block must open with a table size update to 0.
    size_update_due: bool,
}

impl Default for Encoder {
    fn default() -> Encoder {
        Encoder::new()
    }
}

impl Encoder {
    /// An encoder for a new connection; its first block will shrink the
    /// peer's table to 0 (see [`Encoder::begin_block`]).
    pub(crate) fn new() -> Encoder {
        Encoder {
            size_update_due: true,
        }
    }

    /// Must be called at the start of every header block the encoder
    /// writes: the first one opens with a dynamic table size update to 0.
    ///
    /// We never reference the peer's table, so its size is ours to pick,
    /// and 0 frees the peer's memory for it. More to the point, a decoder
    /// whose SETTINGS_HEADER_TABLE_SIZE drops below the table's current size
    /// expects a size update at the start of the next block (RFC 7541 §4.2);
    /// at 0 the table is never above any setting the peer can choose, so
    /// after this one update none is ever owed again.
    pub(crate) fn begin_block(&mut self, dst: &mut Vec<u8>) {
        if self.size_update_due {
            encode_integer(dst, SIZE_UPDATE, 5, 0);
            self.size_update_due = false;
        }
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE changed.
    ///
    /// Nothing to do: from the first block on, our table size is 0, which
    /// no setting can be below (see [`Encoder::begin_block`]), and until
    /// then the first block's update to 0 is still due.
    pub(crate) fn set_peer_table_size(&mut self, _size: usize) {}

    /// Appends the field for `:status`: indexed from the static table for
    /// 200, 204, 206, 304, 400, 404 and 500, a literal with indexed name
    /// otherwise.
    pub(crate) fn status(&mut self, code: u16, dst: &mut Vec<u8>) {
        let index = match code {
            200 => 8,
            204 => 9,
            206 => 10,
            304 => 11,
            400 => 12,
            404 => 13,
            500 => 14,
            _ => {
                encode_integer(dst, WITHOUT_INDEXING, 4, STATUS_NAME_INDEX);
                let mut digits = itoa::Buffer::new();
                encode_raw_string(dst, digits.format(code).as_bytes());
                return;
            }
        };
        encode_integer(dst, INDEXED, 7, index);
    }

    /// Appends one regular field (name already lowercase and valid).
    ///
    /// `sensitive` fields (authorization, short cookies: values a guess can
    /// be checked against by watching compressed sizes) are sent as "never
    /// indexed", which tells any intermediary that re-encodes them to keep
    /// them out of its own dynamic table too (§7.1.3).
    pub(crate) fn field(&mut self, name: &[u8], value: &[u8], sensitive: bool, dst: &mut Vec<u8>) {
        let kind = if sensitive {
            NEVER_INDEXED
        } else {
            WITHOUT_INDEXING
        };
        match static_name_index(name) {
            Some(index) => encode_integer(dst, kind, 4, index),
            None => {
                dst.push(kind);
                encode_raw_string(dst, name);
            }
        }
        encode_raw_string(dst, value);
    }
}

/// Appends `value` as an integer (§5.1) whose first byte has `flags` above
/// a `prefix_bits`-bit prefix.
///
/// Inlined for the common cases: a value that fits the prefix (lengths
/// below 127) and one continuation byte (static indices of 15 and up).
#[inline]
fn encode_integer(dst: &mut Vec<u8>, flags: u8, prefix_bits: u32, value: usize) {
    let prefix_max = (1usize << prefix_bits) - 1;
    match value.checked_sub(prefix_max) {
        None => dst.push(flags | value as u8),
        Some(rest) if rest < 0x80 => dst.extend_from_slice(&[flags | prefix_max as u8, rest as u8]),
        Some(rest) => encode_long_integer(dst, flags | prefix_max as u8, rest),
    }
}

/// The rest of [`encode_integer`]: the full prefix, then `rest` 7 bits a
/// byte, least significant first.
#[cold]
fn encode_long_integer(dst: &mut Vec<u8>, first: u8, mut rest: usize) {
    dst.push(first);
    while rest >= 0x80 {
        dst.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    dst.push(rest as u8);
}

/// Appends `bytes` as a string literal without Huffman coding (§5.2).
#[inline]
fn encode_raw_string(dst: &mut Vec<u8>, bytes: &[u8]) {
    encode_integer(dst, 0, 7, bytes.len());
    dst.extend_from_slice(bytes);
}

/// The Huffman code (RFC 7541 Appendix B): for each symbol, 0 to 255 and
/// then EOS, its code in the low `bits` bits of the `u32`.
#[rustfmt::skip]
const HUFFMAN_CODES: [(u32, u8); 257] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), // 0..=3
    (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28), // 4..=7
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28), // 8..=11
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28), // 12..=15
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28), // 16..=19
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28), // 20..=23
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), // 24..=27
    (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28), // 28..=31
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12), // 32..=35 ' ' ! " #
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11), // 36..=39 $ % & '
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11), // 40..=43 ( ) * +
    (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6), // 44..=47 , - . /
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6), // 48..=51 0 1 2 3
    (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6), // 52..=55 4 5 6 7
    (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8), // 56..=59 8 9 : ;
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10), // 60..=63 < = > ?
    (0x1ffa, 13), (0x21, 6), (0x5d, 7), (0x5e, 7), // 64..=67 @ A B C
    (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7), // 68..=71 D E F G
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7), // 72..=75 H I J K
    (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7), // 76..=79 L M N O
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7), // 80..=83 P Q R S
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7), // 84..=87 T U V W
    (0xfc, 8), (0x73, 7), (0xfd, 8), (0x1ffb, 13), // 88..=91 X Y Z [
    (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6), // 92..=95 \ ] ^ _
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5), // 96..=99 ` a b c
    (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6), // 100..=103 d e f g
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7), // 104..=107 h i j k
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5), // 108..=111 l m n o
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5), // 112..=115 p q r s
    (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7), // 116..=119 t u v w
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15), // 120..=123 x y z {
    (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28), // 124..=127 | } ~ DEL
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20), // 128..=131
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23), // 132..=135
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23), // 136..=139
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23), // 140..=143
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23), // 144..=147
    (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23), // 148..=151
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23), // 152..=155
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24), // 156..=159
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22), // 160..=163
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21), // 164..=167
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24), // 168..=171
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23), // 172..=175
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21), // 176..=179
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23), // 180..=183
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22), // 184..=187
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23), // 188..=191
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19), // 192..=195
    (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25), // 196..=199
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27), // 200..=203
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25), // 204..=207
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27), // 208..=211
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24), // 212..=215
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26), // 216..=219
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27), // 220..=223
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21), // 224..=227
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23), // 228..=231
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25), // 232..=235
    (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23), // 236..=239
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26), // 240..=243
    (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27), // 244..=247
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27), // 248..=251
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26), // 252..=255
    (0x3fffffff, 30), // 256 EOS
];

/// The symbol number of EOS, which may only appear as padding.
const HUFFMAN_EOS: u16 = 256;

/// The Huffman decoder as a state machine that eats 4 bits at a time.
///
/// A state is an inner node of the code's binary tree (257 leaves make 256
/// inner nodes, so a state fits a `u8`): the bits read since the last
/// symbol. Each state has a step per nibble. The shortest code is 5 bits,
/// so a nibble completes at most one symbol, and a byte costs two table
/// lookups instead of eight tree steps. The table is 16 KiB, small enough to
/// stay in cache; a byte-at-a-time one would be 256 KiB.
struct HuffmanMachine {
    /// The step from `state` on `nibble` is at `state * 16 + nibble`.
    steps: [HuffmanStep; 256 * 16],
    /// Whether a string may end in this state: the bits since the last
    /// symbol are at most 7 and all ones, a prefix of EOS (§5.2).
    accepts_end: [bool; 256],
}

/// One nibble's worth of decoding, packed so that the decoding loop applies
/// it with one load and no branches. Bits 4..12 hold the next state, so
/// that bits 0..12 are the index of its first step and the next lookup is
/// one OR away (the loop is bound by this chain of lookups, not by its
/// instruction count); bits 16..24 hold the symbol the nibble completed,
/// if any; then come two flags.
type HuffmanStep = u32;
/// The bits of a step that index the next state's steps.
const STEP_NEXT_ROW: HuffmanStep = 0xff0;
const STEP_SYMBOL_SHIFT: u32 = 16;
/// The step completed a symbol.
const STEP_EMITS: HuffmanStep = 1 << 24;
/// The step completed EOS, which no string may contain (§5.2).
const STEP_FAILS: HuffmanStep = 1 << 25;

/// Built at compile time from [`HUFFMAN_CODES`]; a code table that were
/// not a complete prefix code would fail the build.
static HUFFMAN: HuffmanMachine = HuffmanMachine::build();

impl HuffmanMachine {
    const fn build() -> HuffmanMachine {
        // Tree links: 0 is "no child yet" (the root, node 0, is nobody's
        // child), LEAF | symbol a leaf, anything else an inner node.
        const LEAF: u16 = 0x8000;
        let mut children = [[0u16; 2]; 256];
        let mut nodes = 1;
        let mut symbol = 0;
        while symbol < HUFFMAN_CODES.len() {
            let (code, bits) = HUFFMAN_CODES[symbol];
            let mut node = 0;
            let mut bit = bits;
            while bit > 1 {
                bit -= 1;
                let branch = ((code >> bit) & 1) as usize;
                let child = children[node][branch];
                if child == 0 {
                    assert!(nodes < 256, "Huffman tree has too many inner nodes");
                    children[node][branch] = nodes as u16;
                    node = nodes;
                    nodes += 1;
                } else {
                    assert!(child & LEAF == 0, "Huffman code is not prefix-free");
                    node = child as usize;
                }
            }
            let branch = (code & 1) as usize;
            assert!(
                children[node][branch] == 0,
                "Huffman code is not prefix-free"
            );
            children[node][branch] = LEAF | symbol as u16;
            symbol += 1;
        }
        assert!(nodes == 256, "Huffman tree is not complete");

        let mut steps = [0; 256 * 16];
        let mut state = 0;
        while state < 256 {
            let mut nibble = 0;
            while nibble < 16 {
                let mut step = 0;
                let mut node = state;
                let mut bit = 4;
                while bit > 0 {
                    bit -= 1;
                    let child = children[node][(nibble >> bit) & 1];
                    assert!(child != 0, "Huffman tree is not complete");
                    if child & LEAF == 0 {
                        node = child as usize;
                    } else if child & !LEAF == HUFFMAN_EOS {
                        step |= STEP_FAILS;
                        break;
                    } else {
                        assert!(step == 0, "two Huffman symbols in one nibble");
                        step = STEP_EMITS | ((child & !LEAF) as HuffmanStep) << STEP_SYMBOL_SHIFT;
                        node = 0;
                    }
                }
                steps[state * 16 + nibble] = step | (node as HuffmanStep) << 4;
                nibble += 1;
            }
            state += 1;
        }

        let mut accepts_end = [false; 256];
        accepts_end[0] = true;
        let mut node = 0;
        let mut depth = 0;
        while depth < 7 {
            let child = children[node][1];
            assert!(
                child & LEAF == 0,
                "a code of 7 ones or fewer makes padding ambiguous"
            );
            node = child as usize;
            accepts_end[node] = true;
            depth += 1;
        }
        HuffmanMachine { steps, accepts_end }
    }
}

/// Appends the Huffman decoding (§5.2) of `src` to `dst`.
///
/// Branch-free per nibble: every step writes its symbol to the next free
/// byte and moves past it only if it completed one, and the steps' EOS
/// flags are gathered and checked once at the end. A string holding EOS
/// is a broken or hostile peer's, so decoding it to its end before failing
/// costs nothing that matters.
fn decode_huffman(src: &[u8], dst: &mut Vec<u8>) -> Result<(), DecodeError> {
    let start = dst.len();
    // The shortest code is 5 bits, so n bytes hold at most 8n/5 symbols;
    // this is at least that plus one, the byte a non-emitting step writes.
    let room = (src.len() / 5).saturating_mul(8).saturating_add(7);
    dst.resize(start.saturating_add(room), 0);
    // In bounds: `start` was the length before growing.
    let out = &mut dst[start..];
    let mut written = 0;
    let mut all_steps = 0;
    let mut row = 0;
    for &byte in src {
        for nibble in [byte >> 4, byte & 0x0f] {
            let step = HUFFMAN.steps[row | usize::from(nibble)];
            if let Some(slot) = out.get_mut(written) {
                *slot = (step >> STEP_SYMBOL_SHIFT) as u8;
            }
            written += usize::from(step & STEP_EMITS != 0);
            all_steps |= step;
            row = (step & STEP_NEXT_ROW) as usize;
        }
    }
    let state = row / 16;
    dst.truncate(start + written);
    if all_steps & STEP_FAILS != 0 {
        Err(DecodeError::HUFFMAN_EOS)
    } else if !HUFFMAN.accepts_end[state] {
        Err(DecodeError::HUFFMAN_PADDING)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn pairs(fields: &[(&str, &str)]) -> Fields {
        fields
            .iter()
            .map(|(name, value)| (name.as_bytes().to_vec(), value.as_bytes().to_vec()))
            .collect()
    }

    fn decode(decoder: &mut Decoder, block: &[u8]) -> Result<Fields, DecodeError> {
        let mut fields = Vec::new();
        let outcome = decoder.decode(block, |name, value, _| {
            fields.push((name.to_vec(), value.to_vec()));
            Ok(())
        })?;
        assert_eq!(outcome, Decoded::Complete);
        Ok(fields)
    }

    fn table(decoder: &Decoder) -> Fields {
        decoder
            .table
            .entries
            .iter()
            .map(|entry| {
                let (name, value) = entry.name_value();
                (name.to_vec(), value.to_vec())
            })
            .collect()
    }

    fn assert_table_consistent(decoder: &Decoder) {
        let table = &decoder.table;
        let sum: usize = table.entries.iter().map(Entry::size).sum();
        assert_eq!(table.size, sum);
        assert!(table.size <= table.max_size);
        assert!(table.max_size <= decoder.max_table_size);
    }

    /// Huffman-encodes `src` with the RFC's table, padding with ones: the
    /// tests' reference for the decoder.
    fn huffman_encode(src: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut bits: u64 = 0;
        let mut pending = 0;
        for &byte in src {
            let (code, len) = HUFFMAN_CODES[usize::from(byte)];
            bits = (bits << len) | u64::from(code);
            pending += u32::from(len);
            while pending >= 8 {
                pending -= 8;
                out.push((bits >> pending) as u8);
            }
        }
        if pending > 0 {
            out.push(((bits << (8 - pending)) as u8) | (0xff >> pending));
        }
        out
    }

    fn huffman_decode(src: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        decode_huffman(src, &mut out)?;
        Ok(out)
    }

    /// A deterministic xorshift64 generator for the fuzz loops.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

    #[test]
    fn c2_1_literal_with_indexing_enters_the_table() {
        let mut decoder = Decoder::new(4096);
        let block = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
        let fields = decode(&mut decoder, &block).unwrap();
        assert_eq!(fields, pairs(&[("custom-key", "custom-header")]));
        assert_eq!(table(&decoder), pairs(&[("custom-key", "custom-header")]));
        assert_eq!(decoder.table.size, 55);
    }

    #[test]
    fn c2_2_literal_without_indexing_leaves_the_table_alone() {
        let mut decoder = Decoder::new(4096);
        let block = hex("040c 2f73 616d 706c 652f 7061 7468");
        let fields = decode(&mut decoder, &block).unwrap();
        assert_eq!(fields, pairs(&[(":path", "/sample/path")]));
        assert!(table(&decoder).is_empty());
    }

    #[test]
    fn never_indexed_literals_are_reported_as_such() {
        let mut decoder = Decoder::new(4096);
        let mut seen = Vec::new();
        // C.2.3 (never indexed `password: secret`), then C.2.2 (without
        // indexing `:path: /sample/path`).
        let mut block = hex("100870617373776f726406736563726574");
        block.extend(hex("040c2f73616d706c652f70617468"));
        decoder
            .decode(&block, |name, _, never| {
                seen.push((name.to_vec(), never));
                Ok(())
            })
            .unwrap();
        assert_eq!(
            seen,
            [(b"password".to_vec(), true), (b":path".to_vec(), false)]
        );
    }

    #[test]
    fn c2_3_never_indexed_literal_leaves_the_table_alone() {
        let mut decoder = Decoder::new(4096);
        let block = hex("1008 7061 7373 776f 7264 0673 6563 7265 74");
        let fields = decode(&mut decoder, &block).unwrap();
        assert_eq!(fields, pairs(&[("password", "secret")]));
        assert!(table(&decoder).is_empty());
    }

    #[test]
    fn c2_4_indexed_field_comes_from_the_static_table() {
        let mut decoder = Decoder::new(4096);
        let fields = decode(&mut decoder, &hex("82")).unwrap();
        assert_eq!(fields, pairs(&[(":method", "GET")]));
        assert!(table(&decoder).is_empty());
    }

    /// The three requests of C.3 (raw strings) or C.4 (Huffman), decoded in
    /// order on one decoder, with the table checked after each.
    fn check_requests(blocks: [&str; 3]) {
        let mut decoder = Decoder::new(4096);
        let first = decode(&mut decoder, &hex(blocks[0])).unwrap();
        assert_eq!(
            first,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ])
        );
        assert_eq!(table(&decoder), pairs(&[(":authority", "www.example.com")]));
        assert_eq!(decoder.table.size, 57);

        let second = decode(&mut decoder, &hex(blocks[1])).unwrap();
        assert_eq!(
            second,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ])
        );
        assert_eq!(
            table(&decoder),
            pairs(&[
                ("cache-control", "no-cache"),
                (":authority", "www.example.com"),
            ])
        );
        assert_eq!(decoder.table.size, 110);

        let third = decode(&mut decoder, &hex(blocks[2])).unwrap();
        assert_eq!(
            third,
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(
            table(&decoder),
            pairs(&[
                ("custom-key", "custom-value"),
                ("cache-control", "no-cache"),
                (":authority", "www.example.com"),
            ])
        );
        assert_eq!(decoder.table.size, 164);
        assert_table_consistent(&decoder);
    }

    #[test]
    fn c3_requests_without_huffman_share_the_dynamic_table() {
        check_requests([
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ]);
    }

    #[test]
    fn c4_requests_with_huffman_share_the_dynamic_table() {
        check_requests([
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ]);
    }

    /// The three responses of C.5 (raw strings) or C.6 (Huffman), on a
    /// table of 256 bytes, so that the later ones evict.
    fn check_responses(blocks: [&str; 3]) {
        let mut decoder = Decoder::new(256);
        let first = decode(&mut decoder, &hex(blocks[0])).unwrap();
        assert_eq!(
            first,
            pairs(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        assert_eq!(
            table(&decoder),
            pairs(&[
                ("location", "https://www.example.com"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("cache-control", "private"),
                (":status", "302"),
            ])
        );
        assert_eq!(decoder.table.size, 222);

        let second = decode(&mut decoder, &hex(blocks[1])).unwrap();
        assert_eq!(
            second,
            pairs(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        assert_eq!(
            table(&decoder),
            pairs(&[
                (":status", "307"),
                ("location", "https://www.example.com"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("cache-control", "private"),
            ])
        );
        assert_eq!(decoder.table.size, 222);

        let third = decode(&mut decoder, &hex(blocks[2])).unwrap();
        let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
        assert_eq!(
            third,
            pairs(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", "https://www.example.com"),
                ("content-encoding", "gzip"),
                ("set-cookie", cookie),
            ])
        );
        assert_eq!(
            table(&decoder),
            pairs(&[
                ("set-cookie", cookie),
                ("content-encoding", "gzip"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
            ])
        );
        assert_eq!(decoder.table.size, 215);
        assert_table_consistent(&decoder);
    }

    #[test]
    fn c5_responses_without_huffman_evict_oldest_entries() {
        check_responses([
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
             6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d \
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 \
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e \
             3d31",
        ]);
    }

    #[test]
    fn c6_responses_with_huffman_evict_oldest_entries() {
        check_responses([
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab \
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ]);
    }

    #[test]
    fn huffman_codes_form_a_complete_prefix_code() {
        // Kraft's sum over 2^-bits is exactly 1 for a complete code.
        let sum: u64 = HUFFMAN_CODES
            .iter()
            .map(|&(_, bits)| 1u64 << (30 - bits))
            .sum();
        assert_eq!(sum, 1 << 30);
        assert_eq!(HUFFMAN_CODES[256], (0x3fff_ffff, 30));
    }

    #[test]
    fn huffman_decodes_every_symbol() {
        for symbol in 0..=255u8 {
            let encoded = huffman_encode(&[symbol]);
            assert_eq!(
                huffman_decode(&encoded).unwrap(),
                [symbol],
                "symbol {symbol}"
            );
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(huffman_decode(&huffman_encode(&all)).unwrap(), all);
        let reversed: Vec<u8> = (0..=255).rev().collect();
        assert_eq!(
            huffman_decode(&huffman_encode(&reversed)).unwrap(),
            reversed
        );
    }

    #[test]
    fn huffman_round_trips_random_strings() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..2000 {
            let len = rng.below(40);
            let text: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            assert_eq!(huffman_decode(&huffman_encode(&text)).unwrap(), text);
        }
    }

    #[test]
    fn huffman_accepts_random_input_only_if_it_is_an_encoding() {
        // Valid padding is fixed (the fewest ones that fill the byte), so
        // whatever decodes must be exactly what encoding the result gives.
        let mut rng = Rng(0x5851_f42d_4c95_7f2d);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let len = rng.below(12);
            let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Ok(text) = huffman_decode(&input) {
                assert!(text.len() <= input.len() * 8 / 5);
                assert_eq!(huffman_encode(&text), input);
                accepted += 1;
            }
        }
        assert!(accepted > 1000, "only {accepted} inputs decoded");
    }

    #[test]
    fn huffman_empty_string_decodes_to_nothing() {
        assert_eq!(huffman_decode(&[]).unwrap(), b"");
    }

    #[test]
    fn huffman_rejects_padding_longer_than_7_bits() {
        // 'a' is 00011: 3 bits of padding fill its byte, then 8 more.
        assert_eq!(huffman_decode(&[0x1f]).unwrap(), b"a");
        assert_eq!(
            huffman_decode(&[0x1f, 0xff]),
            Err(DecodeError::HUFFMAN_PADDING)
        );
        // A byte of padding alone is too long as well.
        assert_eq!(huffman_decode(&[0xff]), Err(DecodeError::HUFFMAN_PADDING));
    }

    #[test]
    fn huffman_rejects_padding_that_is_not_all_ones() {
        assert_eq!(huffman_decode(&[0x18]), Err(DecodeError::HUFFMAN_PADDING));
        assert_eq!(huffman_decode(&[0x1e]), Err(DecodeError::HUFFMAN_PADDING));
    }

    #[test]
    fn huffman_rejects_eos_inside_a_string() {
        // EOS is 30 ones; 32 ones hold it and 2 bits of padding.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::HUFFMAN_EOS)
        );
        // EOS between two symbols: 'a', EOS, 'a', padding.
        let mut bits: u64 = 0b00011;
        bits = (bits << 30) | 0x3fff_ffff;
        bits = (bits << 5) | 0b00011; // 40 bits: 5 whole bytes, no padding.
        let bytes: Vec<u8> = (0..5).rev().map(|i| (bits >> (i * 8)) as u8).collect();
        assert_eq!(huffman_decode(&bytes), Err(DecodeError::HUFFMAN_EOS));
    }

    #[test]
    fn huffman_string_in_a_block_rejects_bad_padding() {
        let mut decoder = Decoder::new(4096);
        // Literal without indexing, name :path, Huffman value of 2 bytes
        // whose padding is 11 bits long.
        let block = [0x04, 0x82, 0x1f, 0xff];
        assert_eq!(
            decode(&mut decoder, &block),
            Err(DecodeError::HUFFMAN_PADDING)
        );
    }

    #[test]
    fn index_zero_is_an_error() {
        let mut decoder = Decoder::new(4096);
        assert_eq!(decode(&mut decoder, &[0x80]), Err(DecodeError::INDEX_ZERO));
    }

    #[test]
    fn index_past_the_table_is_an_error() {
        let mut decoder = Decoder::new(4096);
        // 62 is the first dynamic index, and the table is empty.
        assert_eq!(
            decode(&mut decoder, &[0x80 | 62]),
            Err(DecodeError::INDEX_OUT_OF_RANGE)
        );
        // The same for a name index.
        assert_eq!(
            decode(&mut decoder, &[0x40 | 62, 0x00]),
            Err(DecodeError::INDEX_OUT_OF_RANGE)
        );
        decode(&mut decoder, &[0x40, 0x01, b'a', 0x01, b'b']).unwrap();
        assert_eq!(
            decode(&mut decoder, &[0x80 | 62]).unwrap(),
            pairs(&[("a", "b")])
        );
        assert_eq!(
            decode(&mut decoder, &[0x80 | 63]),
            Err(DecodeError::INDEX_OUT_OF_RANGE)
        );
        // Far past anything, through a multi-byte integer.
        assert_eq!(
            decode(&mut decoder, &[0xff, 0xff, 0xff, 0x03]),
            Err(DecodeError::INDEX_OUT_OF_RANGE)
        );
    }

    #[test]
    fn size_update_above_the_advertised_limit_is_an_error() {
        let mut decoder = Decoder::new(4096);
        let mut block = Vec::new();
        encode_integer(&mut block, SIZE_UPDATE, 5, 4096);
        assert_eq!(decode(&mut decoder, &block).unwrap(), pairs(&[]));
        block.clear();
        encode_integer(&mut block, SIZE_UPDATE, 5, 4097);
        assert_eq!(
            decode(&mut decoder, &block),
            Err(DecodeError::SIZE_UPDATE_TOO_LARGE)
        );
    }

    #[test]
    fn size_update_after_a_field_is_an_error() {
        let mut decoder = Decoder::new(4096);
        assert_eq!(
            decode(&mut decoder, &[0x82, 0x20]),
            Err(DecodeError::SIZE_UPDATE_AFTER_FIELD)
        );
    }

    #[test]
    fn size_updates_at_block_start_evict_and_resize() {
        let mut decoder = Decoder::new(4096);
        decode(&mut decoder, &[0x40, 0x01, b'a', 0x01, b'b']).unwrap();
        decode(&mut decoder, &[0x40, 0x01, b'c', 0x01, b'd']).unwrap();
        assert_eq!(decoder.table.size, 68);
        // Two updates in a row (down to 0, then back up) are allowed, and
        // the first empties the table.
        let mut block = vec![0x20];
        encode_integer(&mut block, SIZE_UPDATE, 5, 34);
        block.extend_from_slice(&[0x40, 0x01, b'e', 0x01, b'f']);
        assert_eq!(decode(&mut decoder, &block).unwrap(), pairs(&[("e", "f")]));
        assert_eq!(table(&decoder), pairs(&[("e", "f")]));
        assert_eq!(decoder.table.max_size, 34);
        // At 34 bytes the table holds one such entry: the next evicts it.
        decode(&mut decoder, &[0x40, 0x01, b'g', 0x01, b'h']).unwrap();
        assert_eq!(table(&decoder), pairs(&[("g", "h")]));
        assert_table_consistent(&decoder);
    }

    #[test]
    fn entry_larger_than_the_table_empties_it_and_is_still_delivered() {
        let mut decoder = Decoder::new(40);
        decode(&mut decoder, &[0x40, 0x01, b'a', 0x01, b'b']).unwrap();
        let block = [
            0x40, 0x01, b'n', 0x08, b'v', b'v', b'v', b'v', b'v', b'v', b'v', b'v',
        ];
        assert_eq!(
            decode(&mut decoder, &block).unwrap(),
            pairs(&[("n", "vvvvvvvv")])
        );
        assert!(table(&decoder).is_empty());
        assert_eq!(decoder.table.size, 0);
    }

    #[test]
    fn new_entry_keeps_the_name_of_the_entry_it_evicts() {
        // Room for one 34-byte entry: inserting a second evicts the first,
        // whose name the second borrows (RFC 7541 §4.4).
        let mut decoder = Decoder::new(34);
        decode(&mut decoder, &[0x40, 0x01, b'a', 0x01, b'b']).unwrap();
        let fields = decode(&mut decoder, &[0x40 | 62, 0x01, b'c']).unwrap();
        assert_eq!(fields, pairs(&[("a", "c")]));
        assert_eq!(table(&decoder), pairs(&[("a", "c")]));
    }

    #[test]
    fn dynamic_table_matches_a_model_through_many_evictions() {
        // A small table, entries of random sizes: insertions evict and
        // recycle buffers of every size, and each entry must still read
        // back exactly, by index, as the model has it.
        const MAX_SIZE: usize = 300;
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let mut decoder = Decoder::new(MAX_SIZE);
        let mut model: VecDeque<(Vec<u8>, Vec<u8>)> = VecDeque::new();
        for round in 0..3000 {
            let name: Vec<u8> = (0..1 + rng.below(20))
                .map(|_| b'a' + rng.below(26) as u8)
                .collect();
            let value: Vec<u8> = (0..rng.below(120)).map(|_| rng.next() as u8).collect();
            let mut block = Vec::new();
            encode_integer(&mut block, WITH_INDEXING, 6, 0);
            encode_raw_string(&mut block, &name);
            encode_raw_string(&mut block, &value);
            decode(&mut decoder, &block).unwrap();

            model.push_front((name, value));
            let mut size: usize = model.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
            while size > MAX_SIZE {
                let (n, v) = model.pop_back().unwrap();
                size -= n.len() + v.len() + 32;
            }
            assert_eq!(table(&decoder), Vec::from(model.clone()), "round {round}");
            assert_table_consistent(&decoder);
            if let Some(pick) = (!model.is_empty()).then(|| rng.below(model.len())) {
                let mut block = Vec::new();
                encode_integer(&mut block, INDEXED, 7, 62 + pick);
                assert_eq!(
                    decode(&mut decoder, &block).unwrap(),
                    vec![model[pick].clone()]
                );
            }
        }
    }

    #[test]
    fn truncated_integer_is_an_error() {
        let mut decoder = Decoder::new(4096);
        assert_eq!(
            decode(&mut decoder, &[0xff]),
            Err(DecodeError::TRUNCATED_INTEGER)
        );
        assert_eq!(
            decode(&mut decoder, &[0xff, 0x80]),
            Err(DecodeError::TRUNCATED_INTEGER)
        );
        // A string length cut short.
        assert_eq!(
            decode(&mut decoder, &[0x04, 0x7f]),
            Err(DecodeError::TRUNCATED_INTEGER)
        );
    }

    #[test]
    fn integer_overflow_is_an_error() {
        let mut decoder = Decoder::new(4096);
        // 127 + (0x7f_ffff_ffff): past u32::MAX within 5 bytes.
        assert_eq!(
            decode(&mut decoder, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(DecodeError::INTEGER_OVERFLOW)
        );
        // u32::MAX itself is accepted as an integer (and is then out of
        // range as an index).
        let mut block = Vec::new();
        encode_integer(&mut block, INDEXED, 7, u32::MAX as usize);
        assert_eq!(
            decode(&mut decoder, &block),
            Err(DecodeError::INDEX_OUT_OF_RANGE)
        );
        block.clear();
        encode_integer(&mut block, INDEXED, 7, u32::MAX as usize + 1);
        assert_eq!(
            decode(&mut decoder, &block),
            Err(DecodeError::INTEGER_OVERFLOW)
        );
    }

    #[test]
    fn integer_with_too_many_continuation_bytes_is_an_error() {
        let mut decoder = Decoder::new(4096);
        // 1 encoded with zero-valued padding bytes: 5 are tolerated, 6 not.
        let five = [0xff, 0x81, 0x80, 0x80, 0x80, 0x00];
        assert_eq!(
            decode(&mut decoder, &five),
            Err(DecodeError::INDEX_OUT_OF_RANGE)
        );
        let six = [0xff, 0x81, 0x80, 0x80, 0x80, 0x80, 0x00];
        assert_eq!(
            decode(&mut decoder, &six),
            Err(DecodeError::INTEGER_TOO_LONG)
        );
    }

    #[test]
    fn string_past_the_end_of_the_block_is_an_error() {
        let mut decoder = Decoder::new(4096);
        assert_eq!(
            decode(&mut decoder, &[0x04, 0x05, b'/']),
            Err(DecodeError::STRING_PAST_END)
        );
        assert_eq!(
            decode(&mut decoder, &[0x00, 0x01, b'a']),
            Err(DecodeError::TRUNCATED_STRING)
        );
        assert_eq!(
            decode(&mut decoder, &[0x40]),
            Err(DecodeError::TRUNCATED_STRING)
        );
    }

    #[test]
    fn scratch_for_an_oversized_value_is_freed_after_its_block() {
        let value = vec![b'a'; SCRATCH_KEPT + 1];
        let encoded = huffman_encode(&value);
        let mut block = vec![0x04];
        encode_integer(&mut block, HUFFMAN_CODED, 7, encoded.len());
        block.extend_from_slice(&encoded);
        let mut decoder = Decoder::new(4096);
        let fields = decode(&mut decoder, &block).unwrap();
        assert_eq!(fields[0].1, value);
        assert_eq!(decoder.value_buf.capacity(), 0);
        // A common value's buffer stays for the next block.
        decode(&mut decoder, &[0x04, 0x81, 0x1f]).unwrap();
        assert!(decoder.value_buf.capacity() > 0);
    }

    #[test]
    fn stopped_decode_still_fills_the_table() {
        let mut decoder = Decoder::new(4096);
        let block = hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d");
        let mut seen = Vec::new();
        let outcome = decoder
            .decode(&block, |name, _, _| {
                seen.push(name.to_vec());
                if seen.len() == 2 {
                    Err(())
                } else {
                    Ok(())
                }
            })
            .unwrap();
        assert_eq!(outcome, Decoded::Stopped);
        assert_eq!(seen, [b":method".to_vec(), b":scheme".to_vec()]);
        // The :authority literal after the stop was still indexed, so the
        // connection's next block can refer to it.
        assert_eq!(table(&decoder), pairs(&[(":authority", "www.example.com")]));
        let next = decode(&mut decoder, &hex("be")).unwrap();
        assert_eq!(next, pairs(&[(":authority", "www.example.com")]));
    }

    #[test]
    fn encoder_opens_the_first_block_with_a_size_update_to_zero() {
        let mut encoder = Encoder::new();
        let mut first = Vec::new();
        encoder.begin_block(&mut first);
        encoder.status(200, &mut first);
        assert_eq!(first, [0x20, 0x88]);
        encoder.set_peer_table_size(0);
        let mut second = Vec::new();
        encoder.begin_block(&mut second);
        encoder.status(200, &mut second);
        assert_eq!(second, [0x88]);

        let mut decoder = Decoder::new(4096);
        assert_eq!(
            decode(&mut decoder, &first).unwrap(),
            pairs(&[(":status", "200")])
        );
        assert_eq!(decoder.table.max_size, 0);
    }

    #[test]
    fn encoded_status_codes_decode_back() {
        let mut encoder = Encoder::new();
        let mut decoder = Decoder::new(4096);
        let indexed = [200, 204, 206, 304, 400, 404, 500];
        for code in [
            200, 204, 206, 304, 400, 404, 500, 100, 101, 201, 301, 302, 418, 503, 999, 0, 7, 65535,
        ] {
            let mut block = Vec::new();
            encoder.begin_block(&mut block);
            let start = block.len();
            encoder.status(code, &mut block);
            if indexed.contains(&code) {
                assert_eq!(block.len() - start, 1, "status {code} is one byte");
            }
            let text = code.to_string();
            assert_eq!(
                decode(&mut decoder, &block).unwrap(),
                pairs(&[(":status", text.as_str())])
            );
        }
    }

    #[test]
    fn encoded_fields_decode_back() {
        let long_value = "x".repeat(300);
        let long_name = "x-".repeat(100);
        let fields: [(&str, &str, bool); 9] = [
            ("content-type", "text/plain", false),
            ("server", "skiff", false),
            ("x-request-id", "abc-123", false),
            ("authorization", "Bearer secret", true),
            ("cookie", "a=b", true),
            ("x-private", "", true),
            ("location", long_value.as_str(), false),
            (long_name.as_str(), "v", false),
            ("access-control-allow-origin", "*", false),
        ];
        let mut encoder = Encoder::new();
        let mut block = Vec::new();
        encoder.begin_block(&mut block);
        encoder.status(302, &mut block);
        for (name, value, sensitive) in fields {
            encoder.field(name.as_bytes(), value.as_bytes(), sensitive, &mut block);
        }
        let mut expected = pairs(&[(":status", "302")]);
        for (name, value, _) in fields {
            expected.push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
        }
        let mut decoder = Decoder::new(4096);
        assert_eq!(decode(&mut decoder, &block).unwrap(), expected);
        assert!(table(&decoder).is_empty());
    }

    #[test]
    fn encoder_picks_the_representation() {
        let mut encoder = Encoder::new();
        let mut out = Vec::new();
        // Static name with index below 15: one byte for the name.
        encoder.field(b"server", b"s", false, &mut out);
        assert_eq!(out, [0x0f, 54 - 15, 0x01, b's']);
        out.clear();
        encoder.field(b":path", b"/", false, &mut out);
        assert_eq!(out, [0x04, 0x01, b'/']);
        out.clear();
        encoder.field(b"authorization", b"t", true, &mut out);
        assert_eq!(out, [0x1f, 23 - 15, 0x01, b't']);
        out.clear();
        encoder.field(b"x-a", b"b", true, &mut out);
        assert_eq!(out, [0x10, 0x03, b'x', b'-', b'a', 0x01, b'b']);
        out.clear();
        encoder.status(302, &mut out);
        assert_eq!(out, [0x08, 0x03, b'3', b'0', b'2']);
    }

    #[test]
    fn static_name_index_finds_every_static_name() {
        for (position, (name, _)) in STATIC_TABLE.iter().enumerate() {
            let first = STATIC_TABLE.iter().position(|(n, _)| n == name).unwrap() + 1;
            assert_eq!(static_name_index(name), Some(first), "position {position}");
        }
        for name in [
            &b""[..],
            b"x",
            b"Age",
            b"ages",
            b"content-typo",
            b"x-forwarded-for",
        ] {
            assert_eq!(static_name_index(name), None);
        }
    }

    #[test]
    fn random_bytes_never_panic_the_decoder() {
        let seeds = [
            hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
            hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
            hex("4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81"),
            hex("3fe1 1f82 1008 7061 7373 776f 7264 0673 6563 7265 74"),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut decoders = [Decoder::new(4096), Decoder::new(256), Decoder::new(0)];
        for round in 0..20_000 {
            let block: Vec<u8> = if round % 2 == 0 {
                let len = rng.below(48);
                (0..len).map(|_| rng.next() as u8).collect()
            } else {
                // A valid block with a few bytes changed and maybe cut short:
                // random bytes rarely get past the first string.
                let mut block = seeds[rng.below(seeds.len())].clone();
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(block.len());
                    block[at] = rng.next() as u8;
                }
                block.truncate(rng.below(block.len() + 1));
                block
            };
            let decoder = &mut decoders[round % 3];
            let mut fields = 0usize;
            let _ = decoder.decode(&block, |_, _, _| {
                fields += 1;
                if fields > 8 {
                    Err(())
                } else {
                    Ok(())
                }
            });
            assert_table_consistent(decoder);
        }
    }

    #[test]
    fn random_fields_round_trip_through_encoder_and_decoder() {
        let names: [&[u8]; 5] = [b"date", b"content-length", b"x-trace", b"set-cookie", b"a"];
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        let mut encoder = Encoder::new();
        let mut decoder = Decoder::new(4096);
        for _ in 0..500 {
            let mut block = Vec::new();
            encoder.begin_block(&mut block);
            let mut expected = Vec::new();
            for _ in 0..rng.below(6) {
                let name = names[rng.below(names.len())];
                let len = rng.below(200);
                let value: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                encoder.field(name, &value, rng.below(2) == 0, &mut block);
                expected.push((name.to_vec(), value));
            }
            assert_eq!(decode(&mut decoder, &block).unwrap(), expected);
        }
    }

    /// A request as curl sends its first one: indexed pseudo-headers and
    /// Huffman literals that enter the table.
    fn typical_request() -> Vec<u8> {
        let mut block = vec![0x82, 0x86, 0x84];
        for (index, value) in [
            (1, &b"localhost:8080"[..]),
            (58, b"curl/8.5.0"),
            (19, b"*/*"),
        ] {
            encode_integer(&mut block, WITH_INDEXING, 6, index);
            let encoded = huffman_encode(value);
            encode_integer(&mut block, HUFFMAN_CODED, 7, encoded.len());
            block.extend_from_slice(&encoded);
        }
        block
    }

    #[test]
    fn typical_request_decodes() {
        let mut decoder = Decoder::new(4096);
        let fields = decode(&mut decoder, &typical_request()).unwrap();
        assert_eq!(
            fields,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "localhost:8080"),
                ("user-agent", "curl/8.5.0"),
                ("accept", "*/*"),
            ])
        );
        // The same request again, all from the tables.
        let fields_again = decode(&mut decoder, &hex("8286 84be bfc0")).unwrap();
        assert_eq!(fields_again.len(), 6);
        assert_eq!(fields_again[3], fields[5]);
    }
}
