//! GGUF (v2 and v3, little-endian) reader over a memory map.
//!
//! Layout: `"GGUF"`, `version: u32`, `tensor_count: u64`, `kv_count: u64`, then `kv_count`
//! metadata pairs (`key: string`, `type: u32`, value), then `tensor_count` tensor infos
//! (`name: string`, `n_dims: u32`, `dims: [u64; n_dims]` with ne0 = innermost, `type: u32`,
//! `offset: u64` relative to the data section), then padding to `general.alignment` (default
//! 32), then the data section. Strings are `u64` length + UTF-8 bytes; arrays are
//! `elem_type: u32`, `count: u64`, elements (arrays may nest).
//!
//! Every read is bounds-checked and every length is checked against the bytes left before
//! anything is allocated, so a truncated or corrupt file gives an error naming the file, never
//! a panic or a huge allocation.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

use crate::input::{self, FileBytes};
use crate::kernels::dequant::{GgmlType, dequantize_to_vec};
use crate::kernels::weight_bytes::{Backing, SharedBytes, release_file_pages};
use std::sync::Arc;

/// GGML's maximum number of tensor dimensions.
const MAX_DIMS: u32 = 4;
/// Deepest nesting of metadata arrays we accept (real files use 1).
const MAX_ARRAY_DEPTH: usize = 8;
const DEFAULT_ALIGNMENT: u64 = 32;
/// Metadata array elements read in all, over every array of a file. Each element becomes a `MetaValue` of 32
/// bytes, so a file of 1-byte elements would otherwise allocate 32 times its own size; this bounds the metadata
/// to 512 MiB. Real files hold under 2 million (vocabulary, token types, scores, merges).
const MAX_ARRAY_VALUES: usize = 1 << 24;

const CORRUPT_HINT: &str = "the file is truncated or corrupt: re-download or re-convert it";

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// GGUF's name for the value type, e.g. `"u32"`, `"array"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::Str(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// The value as an `i128` if it is an integer of any width.
    fn as_int(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// An integer of any type that fits in `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_int().and_then(|v| u64::try_from(v).ok())
    }

    /// An integer of any type that fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_int().and_then(|v| i64::try_from(v).ok())
    }

    /// An integer of any type that fits in `u32`.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_int().and_then(|v| u32::try_from(v).ok())
    }

    /// An integer of any type that fits in `i32`.
    pub fn as_i32(&self) -> Option<i32> {
        self.as_int().and_then(|v| i32::try_from(v).ok())
    }

    /// A float (f32 or f64), or an integer converted to f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_int().map(|v| v as f64),
        }
    }

    /// An f32 stored value exactly; an f64 or integer rounded to f32.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetaValue::F32(v) => Some(v),
            _ => self.as_f64().map(|v| v as f32),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Writes a string quoted, cut to `max` chars.
fn fmt_short_str(f: &mut fmt::Formatter<'_>, s: &str, max: usize) -> fmt::Result {
    let n = s.chars().count();
    if n <= max {
        write!(f, "{s:?}")
    } else {
        let head: String = s.chars().take(max).collect();
        write!(f, "{head:?}… ({n} chars)")
    }
}

/// A short one-line rendering (long strings and arrays are abbreviated), for `condlm info`.
impl fmt::Display for MetaValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaValue::U8(v) => write!(f, "{v}"),
            MetaValue::I8(v) => write!(f, "{v}"),
            MetaValue::U16(v) => write!(f, "{v}"),
            MetaValue::I16(v) => write!(f, "{v}"),
            MetaValue::U32(v) => write!(f, "{v}"),
            MetaValue::I32(v) => write!(f, "{v}"),
            MetaValue::U64(v) => write!(f, "{v}"),
            MetaValue::I64(v) => write!(f, "{v}"),
            MetaValue::F32(v) => write!(f, "{v}"),
            MetaValue::F64(v) => write!(f, "{v}"),
            MetaValue::Bool(v) => write!(f, "{v}"),
            MetaValue::Str(s) => fmt_short_str(f, s, 80),
            MetaValue::Array(a) => {
                const SHOW: usize = 6;
                let elem = a.first().map_or("?", |v| v.type_name());
                write!(f, "[{elem}; {}] [", a.len())?;
                for (i, v) in a.iter().take(SHOW).enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    match v {
                        MetaValue::Str(s) => fmt_short_str(f, s, 24)?,
                        MetaValue::Array(inner) => write!(f, "[{} items]", inner.len())?,
                        other => write!(f, "{other}")?,
                    }
                }
                if a.len() > SHOW {
                    f.write_str(", …")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// One tensor's entry in the GGUF tensor-info table.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` = ne0, the innermost (fastest-varying) dimension. The row-major
    /// (PyTorch/numpy) shape is this reversed.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset of the data, relative to the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Number of elements (the product of `dims`; 1 for a 0-d tensor). Checked at open time
    /// not to overflow for tensors read from a file.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).unwrap_or(u64::MAX)
    }

    /// Bytes of data, or `None` if ne0 is not a whole number of blocks or the size overflows.
    pub fn n_bytes(&self) -> Option<u64> {
        let ne0 = self.dims.first().copied().unwrap_or(1);
        if !ne0.is_multiple_of(self.ty.block_size() as u64) {
            return None;
        }
        let n = self.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        self.ty.bytes_for(n)
    }

    /// Row-major shape (outermost first), i.e. `dims` reversed, as `usize`.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// An open GGUF file: parsed metadata and tensor infos, with tensor data read lazily from the
/// memory map.
pub struct GgufFile {
    path: PathBuf,
    bytes: Arc<FileBytes>,
    version: u32,
    alignment: u64,
    data_offset: u64,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<GgufTensorInfo>,
    index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

/// A parse failure inside the byte stream: what went wrong and where.
struct ParseError {
    msg: String,
    at: usize,
}

type PResult<T> = std::result::Result<T, ParseError>;

/// Bounds-checked little-endian cursor.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Metadata array elements still allowed (see [`MAX_ARRAY_VALUES`]).
    array_values_left: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn err<T>(&self, msg: impl Into<String>) -> PResult<T> {
        Err(ParseError { msg: msg.into(), at: self.pos })
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> PResult<&'a [u8]> {
        if n > self.remaining() {
            return self.err(format!(
                "unexpected end of file reading {} ({n} bytes needed, {} left)",
                what(),
                self.remaining()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> PResult<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> PResult<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> PResult<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: u64 length + UTF-8 bytes. The length is checked against the bytes left.
    fn string(&mut self, what: &dyn Fn() -> String) -> PResult<String> {
        let start = self.pos;
        let len = self.u64(&|| format!("the length of {}", what()))?;
        if len > self.remaining() as u64 {
            self.pos = start;
            return self.err(format!(
                "{} claims a length of {len} bytes but only {} bytes are left in the file",
                what(),
                self.remaining().saturating_sub(8)
            ));
        }
        let bytes = self.take(len as usize, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => {
                self.pos = start;
                self.err(format!("{} is not valid UTF-8 ({e})", what()))
            }
        }
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in the bytes left.
    fn check_count(&self, count: u64, min_size: usize, what: &str) -> PResult<usize> {
        let fits = (count as u128) * (min_size as u128) <= self.remaining() as u128;
        if !fits {
            return self.err(format!(
                "{what} claims {count} items, which cannot fit in the {} bytes left in the file",
                self.remaining()
            ));
        }
        Ok(count as usize)
    }
}

/// Smallest encoded size of one value of GGUF value type `ty` (without its type tag).
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1, // u8, i8, bool
        2 | 3 => 2,     // u16, i16
        4..=6 => 4,     // u32, i32, f32
        10..=12 => 8,   // u64, i64, f64
        8 => 8,         // string: u64 length
        9 => 4 + 8,     // array: elem type + count
        _ => return None,
    })
}

fn read_value(c: &mut Cursor<'_>, ty: u32, key: &str, depth: usize) -> PResult<MetaValue> {
    let what = || format!("the value of metadata key '{key}'");
    Ok(match ty {
        0 => MetaValue::U8(c.array::<1>(&what)?[0]),
        1 => MetaValue::I8(c.array::<1>(&what)?[0] as i8),
        2 => MetaValue::U16(u16::from_le_bytes(c.array(&what)?)),
        3 => MetaValue::I16(i16::from_le_bytes(c.array(&what)?)),
        4 => MetaValue::U32(u32::from_le_bytes(c.array(&what)?)),
        5 => MetaValue::I32(i32::from_le_bytes(c.array(&what)?)),
        6 => MetaValue::F32(f32::from_le_bytes(c.array(&what)?)),
        7 => MetaValue::Bool(c.array::<1>(&what)?[0] != 0),
        8 => MetaValue::Str(c.string(&what)?),
        9 => {
            if depth >= MAX_ARRAY_DEPTH {
                return c.err(format!("metadata key '{key}' nests arrays more than {MAX_ARRAY_DEPTH} deep"));
            }
            let elem_ty = c.u32(&|| format!("the array element type of metadata key '{key}'"))?;
            let Some(min) = min_value_size(elem_ty) else {
                return c.err(format!("metadata key '{key}' is an array of unknown value type {elem_ty}"));
            };
            let count = c.u64(&|| format!("the array length of metadata key '{key}'"))?;
            let n = c.check_count(count, min, &format!("the array of metadata key '{key}'"))?;
            if n > c.array_values_left {
                return c.err(format!(
                    "metadata key '{key}' brings the file's metadata arrays past {MAX_ARRAY_VALUES} values in all, \
                     far more than any real model has"
                ));
            }
            c.array_values_left -= n;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_value(c, elem_ty, key, depth + 1)?);
            }
            MetaValue::Array(items)
        }
        10 => MetaValue::U64(u64::from_le_bytes(c.array(&what)?)),
        11 => MetaValue::I64(i64::from_le_bytes(c.array(&what)?)),
        12 => MetaValue::F64(f64::from_le_bytes(c.array(&what)?)),
        _ => {
            return c.err(format!("metadata key '{key}' has unknown value type {ty}"));
        }
    })
}

/// llama.cpp's name for GGML type ids condlm does not support, for error messages.
fn unsupported_type_name(id: u32) -> &'static str {
    match id {
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        40 => "NVFP4",
        _ => "unknown",
    }
}

fn supported_type_list() -> String {
    GgmlType::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
}

#[derive(Debug)]
struct Parsed {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<GgufTensorInfo>,
}

/// Parses everything but the tensor data. Errors carry no file name; `open` adds it.
fn parse(buf: &[u8]) -> std::result::Result<Parsed, String> {
    let mut c = Cursor { buf, pos: 0, array_values_left: MAX_ARRAY_VALUES };
    let (version, n_tensors, n_kv) = read_header(&mut c)?;
    let metadata = read_metadata(&mut c, n_kv)?;
    let raw = read_tensor_infos(&mut c, n_tensors)?;
    let alignment = alignment(&metadata)?;
    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    let tensors = check_tensors(raw, data_offset, alignment, buf.len() as u64)?;
    Ok(Parsed { version, alignment, data_offset, metadata, tensors })
}

/// A cursor error as the message `parse` returns: what, where, and what to do.
fn at(e: ParseError) -> String {
    format!("{} (at byte offset {}); {CORRUPT_HINT}", e.msg, e.at)
}

/// Magic and version (legacy, big-endian and unknown versions get their own messages), then the tensor and
/// metadata counts.
fn read_header(c: &mut Cursor<'_>) -> std::result::Result<(u32, u64, u64), String> {
    let buf = c.buf;
    if buf.len() < 4 {
        return Err(format!("the file is only {} bytes long, too short for a GGUF header; {CORRUPT_HINT}", buf.len()));
    }
    let magic = &buf[..4];
    if magic != b"GGUF" {
        let legacy = matches!(magic, b"lmgg" | b"fmgg" | b"tjgg" | b"ggml" | b"ggmf" | b"ggjt");
        return Err(if legacy {
            "this is a legacy GGML/GGJT model file, not GGUF; convert it to GGUF with llama.cpp's \
             conversion scripts"
                .to_string()
        } else {
            format!(
                "not a GGUF file (magic bytes {:02x?}, expected \"GGUF\"); check the path, or \
                 re-download the file if it should be a GGUF model",
                magic
            )
        });
    }
    c.pos = 4;
    let version = c.u32(&|| "the GGUF version".into()).map_err(at)?;
    match version {
        2 | 3 => {}
        1 => {
            return Err("GGUF version 1 is obsolete and not supported; re-convert the model with a \
                 current llama.cpp"
                .into());
        }
        v if v & 0xFFFF == 0 && v != 0 => {
            return Err(format!(
                "this looks like a big-endian GGUF file (version field {v:#010x}), which condlm \
                 does not read; use the little-endian file"
            ));
        }
        v => {
            return Err(format!(
                "unsupported GGUF version {v} (condlm reads versions 2 and 3); re-convert the \
                 model with a llama.cpp release that writes GGUF v3"
            ));
        }
    }
    let n_tensors = c.u64(&|| "the tensor count".into()).map_err(at)?;
    let n_kv = c.u64(&|| "the metadata count".into()).map_err(at)?;
    Ok((version, n_tensors, n_kv))
}

/// The `n_kv` metadata pairs; a key that appears twice is an error.
fn read_metadata(c: &mut Cursor<'_>, n_kv: u64) -> std::result::Result<BTreeMap<String, MetaValue>, String> {
    // Minimum pair: key length (8) + value type (4) + 1-byte value.
    let n_kv = c.check_count(n_kv, 8 + 4 + 1, "the metadata table").map_err(at)?;
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.string(&|| format!("metadata key #{i}")).map_err(at)?;
        let ty = c.u32(&|| format!("the value type of metadata key '{key}'")).map_err(at)?;
        let value = read_value(c, ty, &key, 0).map_err(at)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata key '{key}' appears twice; {CORRUPT_HINT}"));
        }
    }
    Ok(metadata)
}

/// A tensor-info entry as read, before its type and extent are checked: (name, dims, GGML type id, offset).
type RawTensorInfo = (String, Vec<u64>, u32, u64);

/// The `n_tensors` tensor-info entries; a name that appears twice is an error.
fn read_tensor_infos(c: &mut Cursor<'_>, n_tensors: u64) -> std::result::Result<Vec<RawTensorInfo>, String> {
    // Minimum entry: name length (8) + n_dims (4) + type (4) + offset (8).
    let n_tensors = c.check_count(n_tensors, 8 + 4 + 4 + 8, "the tensor table").map_err(at)?;
    let mut raw = Vec::with_capacity(n_tensors);
    let mut seen = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&|| format!("the name of tensor #{i}")).map_err(at)?;
        let n_dims = c.u32(&|| format!("the dimension count of tensor '{name}'")).map_err(at)?;
        if n_dims > MAX_DIMS {
            return Err(format!(
                "tensor '{name}' claims {n_dims} dimensions (GGML allows at most {MAX_DIMS}); \
                 {CORRUPT_HINT}"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&|| format!("dimension {d} of tensor '{name}'")).map_err(at)?);
        }
        let type_id = c.u32(&|| format!("the type of tensor '{name}'")).map_err(at)?;
        let offset = c.u64(&|| format!("the data offset of tensor '{name}'")).map_err(at)?;
        if seen.insert(name.clone(), i).is_some() {
            return Err(format!("tensor '{name}' appears twice; {CORRUPT_HINT}"));
        }
        raw.push((name, dims, type_id, offset));
    }
    Ok(raw)
}

/// `general.alignment` (a power of two), or the default 32.
fn alignment(metadata: &BTreeMap<String, MetaValue>) -> std::result::Result<u64, String> {
    match metadata.get("general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(v) => match v.as_u64() {
            Some(a) if a != 0 && a.is_power_of_two() && a <= 1 << 30 => Ok(a),
            _ => Err(format!("general.alignment is {v} ({}), not a power of two; {CORRUPT_HINT}", v.type_name())),
        },
    }
}

/// Each tensor's GGML type (one condlm dequantizes), dims (sane, whole blocks per row) and data (aligned as
/// llama.cpp requires, inside the file).
fn check_tensors(
    raw: Vec<RawTensorInfo>,
    data_offset: u64,
    alignment: u64,
    file_len: u64,
) -> std::result::Result<Vec<GgufTensorInfo>, String> {
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, dims, type_id, offset) in raw {
        let Some(ty) = GgmlType::from_id(type_id) else {
            return Err(format!(
                "tensor '{name}' has GGML type {type_id} ({}), which condlm cannot dequantize \
                 (supported: {}); re-quantize or re-convert the model to a supported type",
                unsupported_type_name(type_id),
                supported_type_list()
            ));
        };
        let info = GgufTensorInfo { name, dims, ty, offset };
        let name = &info.name;
        if info.dims.iter().any(|&d| d > i64::MAX as u64) {
            return Err(format!("tensor '{name}' has an absurd dimension {:?}; {CORRUPT_HINT}", info.dims));
        }
        let ne0 = info.dims.first().copied().unwrap_or(1);
        if !ne0.is_multiple_of(ty.block_size() as u64) {
            return Err(format!(
                "tensor '{name}' of type {ty} has a row length {ne0} that is not a multiple of \
                 the block size {}; {CORRUPT_HINT}",
                ty.block_size()
            ));
        }
        let Some(n_bytes) = info.n_bytes() else {
            return Err(format!("tensor '{name}' has dims {:?} whose size overflows; {CORRUPT_HINT}", info.dims));
        };
        let end = data_offset.checked_add(info.offset).and_then(|s| s.checked_add(n_bytes));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(format!(
                    "the data of tensor '{name}' ({ty}, dims {:?}, {n_bytes} bytes at data offset \
                     {}) runs past the end of the file ({file_len} bytes, data section starts at \
                     {data_offset}); {CORRUPT_HINT}",
                    info.dims, info.offset
                ));
            }
        }
        if !info.offset.is_multiple_of(alignment) {
            return Err(format!(
                "the data offset {} of tensor '{name}' is not a multiple of the file's alignment {alignment}; \
                 {CORRUPT_HINT}",
                info.offset
            ));
        }
        tensors.push(info);
    }
    // Each tensor owns its bytes: two that share some read each other's data (a damaged or hand-edited index).
    let mut by_offset: Vec<(&GgufTensorInfo, u64)> =
        tensors.iter().map(|t| (t, t.n_bytes().expect("checked above"))).filter(|(_, n)| *n > 0).collect();
    by_offset.sort_by_key(|(t, _)| t.offset);
    let mut reach: Option<(&GgufTensorInfo, u64)> = None; // the tensor whose data ends furthest so far, and its end
    for (t, n) in by_offset {
        if let Some((a, end)) = reach.filter(|(_, end)| t.offset < *end) {
            return Err(format!(
                "the data of tensors '{}' (data offset {}, up to {end}) and '{}' (data offset {}) overlap; \
                 {CORRUPT_HINT}",
                a.name, a.offset, t.name, t.offset
            ));
        }
        if reach.is_none_or(|(_, end)| t.offset + n > end) {
            reach = Some((t, t.offset + n));
        }
    }
    Ok(tensors)
}

/// The tensor data of a GGUF file, viewed by the packed matrices of a model until they move to their arena.
impl Backing for FileBytes {
    fn bytes(&self) -> &[u8] {
        self
    }

    fn release(&self, range: std::ops::Range<usize>) {
        if let FileBytes::Mapped(map) = self {
            // SAFETY: `input::map` maps a file, read-only.
            unsafe { release_file_pages(map, range) };
        }
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file. Tensor data stays in the memory map until asked for.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_bytes(path, input::map(path, "GGUF file")?)
    }

    /// Parses a GGUF file's bytes (what [`GgufFile::open`] does with the memory map); `path` names the file in
    /// errors.
    pub fn from_bytes(path: &Path, bytes: FileBytes) -> Result<Self> {
        if bytes.len() < 24 {
            bail!(
                "GGUF file {}: the file is only {} bytes long, too short for a GGUF header; {CORRUPT_HINT}",
                path.display(),
                bytes.len()
            );
        }
        let p = parse(&bytes).map_err(|e| anyhow!("GGUF file {}: {e}", path.display()))?;
        let index = p.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(GgufFile {
            path: path.to_path_buf(),
            bytes: Arc::new(bytes),
            version: p.version,
            alignment: p.alignment,
            data_offset: p.data_offset,
            metadata: p.metadata,
            tensors: p.tensors,
            index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// The value of `key`, or an error naming the key and the file.
    pub fn require(&self, key: &str) -> Result<&MetaValue> {
        self.metadata.get(key).ok_or_else(|| {
            anyhow!(
                "GGUF file {}: metadata key '{key}' is missing; the model was converted without \
                 it or is not of the expected kind",
                self.path.display()
            )
        })
    }

    fn wrong_type(&self, key: &str, v: &MetaValue, expected: &str) -> anyhow::Error {
        anyhow!("GGUF file {}: metadata key '{key}' is {} {v}, expected {expected}", self.path.display(), v.type_name())
    }

    fn typed<'a, T>(&'a self, key: &str, expected: &str, f: impl Fn(&'a MetaValue) -> Option<T>) -> Result<T> {
        let v = self.require(key)?;
        f(v).ok_or_else(|| self.wrong_type(key, v, expected))
    }

    fn typed_opt<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        f: impl Fn(&'a MetaValue) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| self.wrong_type(key, v, expected)),
        }
    }

    fn typed_array<'a, T>(
        &'a self,
        key: &str,
        elems: &str,
        expected: &str,
        f: impl Fn(&'a MetaValue) -> Option<T>,
    ) -> Result<Vec<T>> {
        self.array_of(key, self.require(key)?, elems, expected, f)
    }

    fn typed_array_opt<'a, T>(
        &'a self,
        key: &str,
        elems: &str,
        expected: &str,
        f: impl Fn(&'a MetaValue) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        self.metadata.get(key).map(|v| self.array_of(key, v, elems, expected, f)).transpose()
    }

    /// `v`, the value of `key`, as an array whose every element `f` accepts.
    fn array_of<'a, T>(
        &self,
        key: &str,
        v: &'a MetaValue,
        elems: &str,
        expected: &str,
        f: impl Fn(&'a MetaValue) -> Option<T>,
    ) -> Result<Vec<T>> {
        let arr = v.as_array().ok_or_else(|| self.wrong_type(key, v, &format!("an array of {elems}")))?;
        arr.iter()
            .enumerate()
            .map(|(i, x)| {
                f(x).ok_or_else(|| {
                    anyhow!(
                        "GGUF file {}: element {i} of metadata array '{key}' is {} {x}, \
                         expected {expected}",
                        self.path.display(),
                        x.type_name()
                    )
                })
            })
            .collect()
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.typed(key, "a string", MetaValue::as_str)
    }

    /// Any integer type whose value fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.typed(key, "an integer that fits in u32", MetaValue::as_u32)
    }

    /// Any integer type whose value fits in usize.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        self.typed(key, "an integer that fits in usize", |v| v.as_u64().and_then(|x| usize::try_from(x).ok()))
    }

    /// Any integer type whose value fits in i64.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.typed(key, "an integer that fits in i64", MetaValue::as_i64)
    }

    /// An f32 (exact), or an f64 / integer converted to f32.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.typed(key, "a number", MetaValue::as_f32)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.typed(key, "a bool", MetaValue::as_bool)
    }

    /// `Ok(None)` when the key is absent; an error when present with the wrong type.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed_opt(key, "a string", MetaValue::as_str)
    }

    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.typed_opt(key, "an integer that fits in u32", MetaValue::as_u32)
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.typed_opt(key, "an integer that fits in usize", |v| v.as_u64().and_then(|x| usize::try_from(x).ok()))
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.typed_opt(key, "a number", MetaValue::as_f32)
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed_opt(key, "a bool", MetaValue::as_bool)
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.typed_array(key, "strings", "a string", MetaValue::as_str)
    }

    /// `Ok(None)` when the key is absent; an error when present and not an array of strings.
    pub fn opt_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        self.typed_array_opt(key, "strings", "a string", MetaValue::as_str)
    }

    /// Array of any integer type whose values fit in i32.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.typed_array(key, "integers", "an integer that fits in i32", MetaValue::as_i32)
    }

    /// `Ok(None)` when the key is absent; an error when present and not an array of integers that fit in i32.
    pub fn opt_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>> {
        self.typed_array_opt(key, "integers", "an integer that fits in i32", MetaValue::as_i32)
    }

    /// Array of any integer type whose values fit in u32.
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>> {
        self.typed_array(key, "integers", "an integer that fits in u32", MetaValue::as_u32)
    }

    /// Array of numbers (f32 exact; f64 and integers converted).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.typed_array(key, "numbers", "a number", MetaValue::as_f32)
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// Like [`GgufFile::tensor`], but an error naming the tensor and the file when it is absent.
    pub fn require_tensor(&self, name: &str) -> Result<&GgufTensorInfo> {
        self.tensor(name).ok_or_else(|| {
            anyhow!(
                "GGUF file {}: no tensor named '{name}' (the file has {} tensors); the model is \
                 not of the expected architecture or was converted differently",
                self.path.display(),
                self.tensors.len()
            )
        })
    }

    /// The raw (still quantized) bytes of a tensor.
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> Result<&[u8]> {
        Ok(&self.bytes[self.tensor_range(info)?])
    }

    /// A tensor's bytes as a shared view of the file (no copy: a model kept packed uses the file's pages).
    pub fn tensor_shared(&self, info: &GgufTensorInfo) -> Result<SharedBytes> {
        Ok(SharedBytes::new(self.bytes.clone(), self.tensor_range(info)?))
    }

    fn tensor_range(&self, info: &GgufTensorInfo) -> Result<std::ops::Range<usize>> {
        let range = info.n_bytes().and_then(|n| {
            let start = self.data_offset.checked_add(info.offset)?;
            let end = start.checked_add(n)?;
            (end <= self.bytes.len() as u64).then_some(start as usize..end as usize)
        });
        match range {
            Some(r) => Ok(r),
            None => bail!(
                "GGUF file {}: the data of tensor '{}' ({}, dims {:?}, data offset {}) lies outside \
                 the file ({} bytes); {CORRUPT_HINT}",
                self.path.display(),
                info.name,
                info.ty,
                info.dims,
                info.offset,
                self.bytes.len()
            ),
        }
    }

    /// A tensor dequantized to f32, row-major with ne0 (`dims[0]`) fastest.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.require_tensor(name)?;
        let bytes = self.tensor_bytes(info)?;
        dequantize_to_vec(info.ty, bytes)
            .map_err(|e| anyhow!("GGUF file {}: cannot dequantize tensor '{name}': {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_short() {
        let long = MetaValue::Array((0..1000).map(MetaValue::I32).collect());
        assert_eq!(long.to_string(), "[i32; 1000] [0, 1, 2, 3, 4, 5, …]");
        let s = MetaValue::Str("x".repeat(200));
        assert!(s.to_string().len() < 120);
        assert_eq!(MetaValue::Str("a\"b".into()).to_string(), "\"a\\\"b\"");
    }

    // Hostile and truncated files: tests/robust_readers.rs.

    #[test]
    fn integer_conversions() {
        assert_eq!(MetaValue::I32(-1).as_u64(), None);
        assert_eq!(MetaValue::U64(1 << 40).as_u32(), None);
        assert_eq!(MetaValue::U8(7).as_u32(), Some(7));
        assert_eq!(MetaValue::I64(-3).as_i32(), Some(-3));
        assert_eq!(MetaValue::U32(3).as_f32(), Some(3.0));
        assert_eq!(MetaValue::Str("3".into()).as_u64(), None);
    }
}
