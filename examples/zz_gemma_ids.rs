use condlm::formats::assemble::load_transformer;
use condlm::formats::load::open_weights;
use condlm::formats::resolve::resolve;
use condlm::formats::weights::BaseDtype;
use condlm::kernels::lm_head::{HeadScratch, logits};
use condlm::network::activations::Activations;
use condlm::network::batch::PackedBatch;
use condlm::network::transformer::Mode;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let files = resolve(&a[1]).unwrap();
    let (c, w) = open_weights(&files).unwrap();
    let m = load_transformer(c, &w, BaseDtype::Stored).unwrap();
    let ids: Vec<u32> = a[2].split(',').map(|s| s.parse().unwrap()).collect();
    let mut acts = Activations::default();
    let b = PackedBatch::new(std::slice::from_ref(&ids));
    m.forward(&b, &mut acts, Mode::Infer);
    let d = m.config.hidden_size;
    let all: Vec<usize> = (0..ids.len()).collect();
    let l = logits(&acts.x[..ids.len() * d], d, m.head(), &all, &mut HeadScratch::default());
    let bytes: Vec<u8> = l.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&a[3], bytes).unwrap();
}
