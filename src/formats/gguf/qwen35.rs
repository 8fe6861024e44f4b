//! Qwen3.5 in llama.cpp's layout (`qwen35`), both ways, as llama.cpp's converter writes it: the Gated DeltaNet's
//! tensors are `ssm_*` (A stored as −e^A_log, dt_bias as `ssm_dt.bias`, the convolution without its middle
//! dimension), in_proj_qkv/in_proj_z are `attn_qkv`/`attn_gate`, and where a key head serves several value heads
//! the value heads are reordered from grouped by key head (HF: k0's v0, v1, k1's v0, v1) to tiled (k0's v0, k1's
//! v0, k0's v1, k1's v1), the order ggml's broadcast reads — in every tensor indexed by value head.
use crate::network::config::DeltaNetShape;
use anyhow::{Result, bail};

/// The Gated DeltaNet tensors of a layer, by HF name inside it, and their llama.cpp names.
pub const LAYER_NAMES: &[(&str, &str)] = &[
    ("linear_attn.in_proj_qkv.weight", "attn_qkv.weight"),
    ("linear_attn.in_proj_z.weight", "attn_gate.weight"),
    ("linear_attn.in_proj_b.weight", "ssm_beta.weight"),
    ("linear_attn.in_proj_a.weight", "ssm_alpha.weight"),
    ("linear_attn.out_proj.weight", "ssm_out.weight"),
    ("linear_attn.conv1d.weight", "ssm_conv1d.weight"),
    ("linear_attn.dt_bias", "ssm_dt.bias"),
    ("linear_attn.A_log", "ssm_a"),
    ("linear_attn.norm.weight", "ssm_norm.weight"),
    // the pre-MLP norm, under the name llama.cpp gives it for this architecture
    ("post_attention_layernorm.weight", "post_attention_norm.weight"),
];

/// Which way a reorder goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToGguf,
    FromGguf,
}

/// The source index of every destination index of `v_heads` blocks of `width` values, grouped by key head (HF)
/// to tiled (GGUF) or back.
fn head_order(s: &DeltaNetShape, width: usize, dir: Direction) -> Vec<usize> {
    let (hk, rep) = (s.k_heads, s.v_heads / s.k_heads);
    let mut order = vec![0; s.v_heads * width];
    for g in 0..hk {
        for r in 0..rep {
            let (grouped, tiled) = (g * rep + r, r * hk + g);
            let (src, dst) = match dir {
                Direction::ToGguf => (grouped, tiled),
                Direction::FromGguf => (tiled, grouped),
            };
            for j in 0..width {
                order[dst * width + j] = src * width + j;
            }
        }
    }
    order
}

/// How tensor `hf_name` (its layer's part, `linear_attn.…`) is laid out by value head: the rows (or, for out_proj,
/// columns) to reorder — from which row/column on, and how many values per head.
enum ByHead {
    /// rows `from..` in heads of `width` rows
    Rows { from: usize, width: usize },
    /// columns, in heads of `width`
    Columns { width: usize },
}

fn by_head(hf_name: &str, s: &DeltaNetShape) -> Option<ByHead> {
    let part = hf_name.rsplit_once(".linear_attn.")?.1;
    Some(match part {
        "in_proj_qkv.weight" | "conv1d.weight" => ByHead::Rows { from: 2 * s.key_dim(), width: s.v_head_dim },
        "in_proj_z.weight" => ByHead::Rows { from: 0, width: s.v_head_dim },
        "in_proj_b.weight" | "in_proj_a.weight" | "dt_bias" | "A_log" => ByHead::Rows { from: 0, width: 1 },
        "out_proj.weight" => ByHead::Columns { width: s.v_head_dim },
        _ => return None,
    })
}

/// Whether HF tensor `hf_name` is a Gated DeltaNet's (`…linear_attn.…`), which [`to_gguf`] may change.
pub fn is_delta_net_tensor(hf_name: &str) -> bool {
    hf_name.contains(".linear_attn.")
}

/// Whether the value heads need reordering at all (a key head per value head keeps the order).
fn reorders(s: &DeltaNetShape) -> bool {
    s.k_heads != s.v_heads
}

/// The row order (row i of the result is row `order[i]` of the source) of a matrix whose value-head reorder is
/// over rows; `None` when it has none or it is over columns (see [`reorders_columns`]).
pub fn row_order(hf_name: &str, s: &DeltaNetShape, rows: usize, dir: Direction) -> Option<Vec<usize>> {
    match by_head(hf_name, s)? {
        ByHead::Rows { from, width } if reorders(s) => {
            let heads = head_order(s, width, dir);
            Some((0..from).chain(heads.iter().map(|&r| from + r)).take(rows).collect())
        }
        _ => None,
    }
}

/// Whether `hf_name`'s reorder is over its columns (out_proj), which a matrix kept in blocks cannot do in place.
pub fn reorders_columns(hf_name: &str, s: &DeltaNetShape) -> bool {
    matches!(by_head(hf_name, s), Some(ByHead::Columns { .. })) && reorders(s)
}

/// The HF tensor `hf_name` from its GGUF values `data` (row-major `shape`, as the file's dims reversed).
pub fn from_gguf(hf_name: &str, shape: &mut Vec<usize>, data: Vec<f32>, s: &DeltaNetShape) -> Result<Vec<f32>> {
    convert(hf_name, shape, data, s, Direction::FromGguf)
}

/// The GGUF values of HF tensor `hf_name` (row-major `shape`, which becomes the file's).
pub fn to_gguf(hf_name: &str, shape: &mut Vec<usize>, data: Vec<f32>, s: &DeltaNetShape) -> Result<Vec<f32>> {
    convert(hf_name, shape, data, s, Direction::ToGguf)
}

fn convert(
    hf_name: &str,
    shape: &mut Vec<usize>,
    mut data: Vec<f32>,
    s: &DeltaNetShape,
    dir: Direction,
) -> Result<Vec<f32>> {
    if hf_name.ends_with(".linear_attn.A_log") {
        data = match dir {
            Direction::ToGguf => data.iter().map(|a| -a.exp()).collect(),
            Direction::FromGguf => {
                if let Some(a) = data.iter().find(|a| a.is_nan() || **a >= 0.0) {
                    bail!("{hf_name}: ssm_a holds {a}; llama.cpp's converter stores −e^A_log, which is negative");
                }
                data.iter().map(|a| (-a).ln()).collect()
            }
        };
    }
    if hf_name.ends_with(".linear_attn.conv1d.weight") {
        // HF (channels, 1, kernel); GGUF (channels, kernel)
        let (c, k) = (s.conv_dim(), s.conv_kernel);
        if data.len() != c * k {
            bail!("{hf_name}: {} values; the convolution of {c} channels × {k} needs {}", data.len(), c * k);
        }
        *shape = match dir {
            Direction::ToGguf => vec![c, k],
            Direction::FromGguf => vec![c, 1, k],
        };
    }
    let cols = match shape.len() {
        0 | 1 => 1,
        _ => shape[1..].iter().product(),
    };
    // the reorder needs the shape the config implies (checked again, with the other tensors, when the model is
    // assembled)
    let implied = match by_head(hf_name, s) {
        Some(ByHead::Rows { from, width }) => Some((from + s.v_heads * width, cols)),
        Some(ByHead::Columns { width }) => Some((shape[0], s.v_heads * width)),
        None => None,
    };
    if let Some((rows, cols)) = implied
        && (shape.first() != Some(&rows) || data.len() != rows * cols)
    {
        bail!(
            "{hf_name}: shape {shape:?}, but the model's Gated DeltaNet ({} key heads of {}, {} value heads of {}) \
             implies {rows} rows of {cols}: the file's ssm.* keys and tensors do not belong together",
            s.k_heads,
            s.k_head_dim,
            s.v_heads,
            s.v_head_dim
        );
    }
    if let Some(order) = row_order(hf_name, s, shape[0], dir) {
        data = order.iter().flat_map(|&r| &data[r * cols..(r + 1) * cols]).copied().collect();
    }
    if let Some(ByHead::Columns { width }) = by_head(hf_name, s).filter(|_| reorders(s)) {
        let order = head_order(s, width, dir);
        data = data.chunks_exact(cols).flat_map(|row| order.iter().map(move |&c| row[c])).collect();
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: DeltaNetShape = DeltaNetShape { k_heads: 2, v_heads: 6, k_head_dim: 2, v_head_dim: 2, conv_kernel: 3 };

    #[test]
    fn value_heads_go_tiled_and_back() {
        // the converter's _reorder_v_heads: (k_heads, v_per_k, dim) → (v_per_k, k_heads, dim)
        let order = head_order(&SHAPE, 1, Direction::ToGguf);
        assert_eq!(order, [0, 3, 1, 4, 2, 5]);
        let back = head_order(&SHAPE, 1, Direction::FromGguf);
        assert!((0..6).all(|i| order[back[i]] == i));
        let name = "model.layers.0.linear_attn.";
        for (part, shape) in [
            ("in_proj_qkv.weight", vec![2 * 4 + 12, 3]),
            ("in_proj_z.weight", vec![12, 3]),
            ("in_proj_a.weight", vec![6, 3]),
            ("dt_bias", vec![6]),
            ("out_proj.weight", vec![3, 12]),
            ("conv1d.weight", vec![20, 1, 3]),
        ] {
            let n: usize = shape.iter().product();
            let hf: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let mut s = shape.clone();
            let gguf = to_gguf(&format!("{name}{part}"), &mut s, hf.clone(), &SHAPE).unwrap();
            assert_ne!(gguf, hf, "{part} is reordered");
            let back = from_gguf(&format!("{name}{part}"), &mut s, gguf, &SHAPE).unwrap();
            assert_eq!((back, s), (hf, shape), "{part}");
        }
        // q and k rows keep their place
        let mut s = vec![20, 1];
        let qkv = to_gguf(&format!("{name}in_proj_qkv.weight"), &mut s, (0..20).map(|i| i as f32).collect(), &SHAPE);
        assert_eq!(&qkv.unwrap()[..12], &[0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 14., 15.]);
    }

    #[test]
    fn a_log_is_stored_as_minus_exp() {
        let name = "model.layers.1.linear_attn.A_log";
        let mut s = vec![6];
        let g = to_gguf(name, &mut s, vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.0], &SHAPE).unwrap();
        assert_eq!(g, [-1.0, -1.0, -(1.0f32).exp(), -1.0, -1.0, -1.0], "tiled: head 1 (k0's v1) goes to 2");
        let bad = from_gguf(name, &mut s, vec![0.5, -1.0, -1.0, -1.0, -1.0, -1.0], &SHAPE).unwrap_err();
        assert!(bad.to_string().contains("negative"), "{bad}");
        let short = from_gguf(name, &mut vec![2], vec![-1.0, -1.0], &SHAPE).unwrap_err();
        assert!(short.to_string().contains("implies 6 rows of 1"), "{short}");
    }
}
