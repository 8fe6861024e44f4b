//! A minimal GGUF v3 writer: metadata, tensor-info table, aligned tensor data. It writes what
//! [`super::file`] reads (and llama.cpp / gguf-py read): little-endian, strings as u64 length +
//! UTF-8 bytes, every tensor's data starting on a multiple of the alignment
//! (`general.alignment` when the metadata sets it as a u32, else 32).

use std::collections::HashSet;
use std::io::Write;

use anyhow::{Context, Result, bail, ensure};

use super::dequant::GgmlType;
use super::file::MetaValue;

const DEFAULT_ALIGNMENT: u64 = 32;

/// One tensor to write: `dims` in GGUF order (`dims[0]` = ne0, the innermost dimension, i.e. the
/// row-major shape reversed) and its data in `ty`'s block bytes (see [`super::quantize::quantize`]).
pub struct TensorToWrite<'a> {
    pub name: &'a str,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub data: TensorData<'a>,
}

/// A tensor's bytes: at hand, or made when the writer reaches the tensor, so that a model is written
/// with one converted tensor in memory at a time.
pub enum TensorData<'a> {
    Bytes(&'a [u8]),
    Lazy(Box<dyn Fn() -> Result<Vec<u8>> + 'a>),
}

/// Writes a GGUF v3 file to `out`. Fails, naming the key or tensor, on duplicate names, arrays
/// whose elements differ in type, or tensor data whose length does not match its dims and type.
pub fn write_gguf<W: Write>(mut out: W, metadata: &[(&str, MetaValue)], tensors: &[TensorToWrite<'_>]) -> Result<()> {
    let alignment = match metadata.iter().find(|(k, _)| *k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, MetaValue::U32(a))) if *a > 0 && a.is_power_of_two() => u64::from(*a),
        Some((_, v)) => bail!("metadata key 'general.alignment' must be a power-of-two u32, not {} {v}", v.type_name()),
    };
    let mut keys = HashSet::new();
    for (k, _) in metadata {
        ensure!(keys.insert(*k), "metadata key '{k}' is given twice; keep one");
    }
    let mut names = HashSet::new();
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for t in tensors {
        ensure!(names.insert(t.name), "tensor '{}' is given twice; tensor names must be unique", t.name);
        let ne0 = t.dims.first().copied().unwrap_or(1);
        let n = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let expected = n.filter(|_| ne0.is_multiple_of(t.ty.block_size() as u64)).and_then(|n| t.ty.bytes_for(n));
        let given = match &t.data {
            TensorData::Bytes(b) => Some(b.len() as u64),
            TensorData::Lazy(_) => None,
        };
        ensure!(
            expected.is_some() && (given.is_none() || expected == given),
            "tensor '{}': dims {:?} of type {} need {} bytes, but {} were given (quantize the tensor to this type, \
             with ne0 a multiple of {})",
            t.name,
            t.dims,
            t.ty,
            expected.map_or("an impossible number of".to_string(), |b| b.to_string()),
            given.map_or("other".to_string(), |b| b.to_string()),
            t.ty.block_size()
        );
        let len = expected.unwrap_or_default();
        offsets.push(offset);
        offset = (offset + len).next_multiple_of(alignment);
    }

    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut head, k);
        head.extend_from_slice(&value_type(v).to_le_bytes());
        put_value(&mut head, v).with_context(|| format!("metadata key '{k}'"))?;
    }
    for (t, &off) in tensors.iter().zip(&offsets) {
        put_str(&mut head, t.name);
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&t.ty.id().to_le_bytes());
        head.extend_from_slice(&off.to_le_bytes());
    }
    head.resize((head.len() as u64).next_multiple_of(alignment) as usize, 0);
    out.write_all(&head)?;
    let mut written = 0u64;
    for (t, &off) in tensors.iter().zip(&offsets) {
        out.write_all(&vec![0u8; (off - written) as usize])?;
        let made;
        let bytes = match &t.data {
            TensorData::Bytes(b) => *b,
            TensorData::Lazy(make) => {
                made = make().with_context(|| format!("tensor '{}'", t.name))?;
                &made[..]
            }
        };
        let len = t.dims.iter().product::<u64>();
        ensure!(
            t.ty.bytes_for(len) == Some(bytes.len() as u64),
            "tensor '{}': {} bytes were made for dims {:?} of type {}",
            t.name,
            bytes.len(),
            t.dims,
            t.ty
        );
        out.write_all(bytes)?;
        written = off + bytes.len() as u64;
    }
    out.write_all(&vec![0u8; (offset - written) as usize])?;
    out.flush()?;
    Ok(())
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// The GGUF value type id (`enum gguf_type`).
fn value_type(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::Str(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn put_value(b: &mut Vec<u8>, v: &MetaValue) -> Result<()> {
    match v {
        MetaValue::U8(x) => b.push(*x),
        MetaValue::I8(x) => b.push(*x as u8),
        MetaValue::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => b.push(u8::from(*x)),
        MetaValue::Str(s) => put_str(b, s),
        MetaValue::Array(items) => {
            // GGUF arrays carry one element type; an empty array is written as a u8 array
            let elem = items.first().map_or(0, value_type);
            if let Some(i) = items.iter().position(|x| value_type(x) != elem) {
                bail!(
                    "array element {i} is {} but element 0 is {}; GGUF arrays hold one type",
                    items[i].type_name(),
                    items[0].type_name()
                );
            }
            b.extend_from_slice(&elem.to_le_bytes());
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for x in items {
                put_value(b, x)?;
            }
        }
    }
    Ok(())
}
