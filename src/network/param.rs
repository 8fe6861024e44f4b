//! A named tensor. Its gradient buffer exists only while it is trainable, so a frozen base
//! cannot accumulate (or pay memory for) gradients by construction.

pub struct Param {
    /// The HF tensor name (or PEFT key for adapters), e.g. "model.layers.0.self_attn.q_proj.weight".
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub grad: Option<Vec<f32>>,
}

impl Param {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Param { name: name.into(), shape, data, grad: None }
    }

    pub fn is_trainable(&self) -> bool {
        self.grad.is_some()
    }

    /// Gives the tensor a zeroed gradient buffer (trainable) or drops it (frozen).
    pub fn set_trainable(&mut self, trainable: bool) {
        self.grad = trainable.then(|| vec![0.0; self.data.len()]);
    }

    pub fn zero_grad(&mut self) {
        if let Some(g) = &mut self.grad {
            g.fill(0.0);
        }
    }
}
