//! A named tensor. Its gradient buffer exists only while it is trainable, so a frozen base
//! cannot accumulate (or pay memory for) gradients by construction.
use crate::kernels::dequant::GgmlType;
use crate::kernels::packed::{MatrixRef, PackedMatrix};
use std::borrow::Cow;

pub struct Param {
    /// The HF tensor name (or PEFT key for adapters), e.g. "model.layers.0.self_attn.q_proj.weight".
    pub name: String,
    pub shape: Vec<usize>,
    /// The values as f32 — empty while the tensor is kept [`Param::packed`].
    pub data: Vec<f32>,
    pub grad: Option<Vec<f32>>,
    /// A frozen matrix kept in its stored form (GGML blocks, F16, BF16) instead of `data`; see
    /// [`Param::values`] and [`Param::unpack`]. Never trainable.
    pub packed: Option<PackedMatrix>,
}

impl Param {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Param { name: name.into(), shape, data, grad: None, packed: None }
    }

    /// A frozen (out, in) matrix kept as `packed`.
    pub fn new_packed(name: impl Into<String>, packed: PackedMatrix) -> Self {
        let shape = vec![packed.rows, packed.cols];
        Param { name: name.into(), shape, data: Vec::new(), grad: None, packed: Some(packed) }
    }

    /// Whether AdamW's weight decay applies: to matrices (linear weights, embeddings, LoRA factors), not to
    /// biases or norm gains — the nanoGPT / HF Trainer convention.
    pub fn decays(&self) -> bool {
        self.shape.len() >= 2
    }

    pub fn is_trainable(&self) -> bool {
        self.grad.is_some()
    }

    /// Gives the tensor a zeroed gradient buffer (trainable; a packed tensor becomes f32 first) or drops it
    /// (frozen).
    pub fn set_trainable(&mut self, trainable: bool) {
        if trainable {
            self.unpack();
        }
        self.grad = trainable.then(|| vec![0.0; self.data.len()]);
    }

    pub fn zero_grad(&mut self) {
        if let Some(g) = &mut self.grad {
            g.fill(0.0);
        }
    }

    /// The tensor as a (rows, cols) matrix for the kernels (rows = its first dimension).
    pub fn matrix(&self) -> MatrixRef<'_> {
        dense_or_packed(&self.shape, &self.data, self.packed.as_ref())
    }

    /// [`Self::matrix`] and the gradient buffer (when trainable) at once.
    pub fn matrix_and_grad(&mut self) -> (MatrixRef<'_>, Option<&mut [f32]>) {
        let Param { shape, data, grad, packed, .. } = self;
        (dense_or_packed(shape, data, packed.as_ref()), grad.as_deref_mut())
    }

    /// The values as f32, dequantized when packed.
    pub fn values(&self) -> Cow<'_, [f32]> {
        match &self.packed {
            Some(p) => Cow::Owned(p.to_f32()),
            None => Cow::Borrowed(&self.data),
        }
    }

    /// Turns a packed tensor into f32 `data` (to be changed: merged, trained).
    pub fn unpack(&mut self) {
        if let Some(p) = self.packed.take() {
            self.data = p.to_f32();
        }
    }

    /// The type the values are kept in.
    pub fn dtype(&self) -> GgmlType {
        self.packed.as_ref().map_or(GgmlType::F32, |p| p.ty)
    }
}

fn dense_or_packed<'a>(shape: &[usize], data: &'a [f32], packed: Option<&'a PackedMatrix>) -> MatrixRef<'a> {
    match packed {
        Some(p) => MatrixRef::Packed(p),
        None => MatrixRef::Dense { data, rows: shape[0], cols: data.len() / shape[0].max(1) },
    }
}
