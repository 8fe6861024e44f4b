//! Times the int8 row kernels (`condlm::kernels::quant_dot::dot_rows`, what `--compute int8` runs) on one row of
//! x against a weight matrix of each hot type, on one thread, once per instruction set this CPU has: GB/s of
//! weights streamed. A matrix that fits in L2 times the kernel's instructions; one far larger than the caches
//! times it against memory, as decoding runs it. Random blocks (finite positive f16 scales).
//! Usage: cargo run --release --example quant_dot_bench -- [--cols C] [--rows R[,R…]]
use condlm::kernels::dequant::GgmlType;
use condlm::kernels::quant_dot::{Isa, Q8Rows, dot_rows};
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).map(|i| args[i + 1].clone())
}

fn main() {
    let cols: usize = arg("--cols").map_or(1536, |c| c.parse().expect("--cols: a number"));
    let rows: Vec<usize> =
        arg("--rows").map_or(vec![256, 200_000], |r| r.split(',').map(|n| n.parse().expect("--rows")).collect());
    let x: Vec<f32> = (0..cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
    println!("| type | weight rows × {cols} | instruction set | GB/s |\n|---|---|---|---|");
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        let rb = cols / ty.block_size() * ty.type_size();
        let mut xs = Q8Rows::default();
        xs.quantize(ty, &x, cols);
        for &n in &rows {
            let mut w: Vec<u8> = (0..n * rb).map(|i| ((i * 2654435761usize) >> 13) as u8).collect();
            let scales: &[usize] = match ty {
                GgmlType::Q4_0 | GgmlType::Q8_0 => &[0],
                GgmlType::Q6_K => &[208],
                _ => &[0, 2],
            };
            for block in w.chunks_exact_mut(ty.type_size()) {
                scales.iter().for_each(|&o| block[o + 1] = 0x30); // f16 in [0.125, 0.25)
            }
            let mut out = vec![0.0f32; 64];
            for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
                let reps = (2_000_000_000 / w.len()).max(1);
                let start = Instant::now();
                for _ in 0..reps {
                    for chunk in w.chunks(64 * rb) {
                        dot_rows(isa, ty, chunk, &xs, 0..1, &mut out[..chunk.len() / rb]);
                    }
                }
                let gbs = (reps * w.len()) as f64 / start.elapsed().as_secs_f64() / 1e9;
                println!("| {ty} | {n} | {isa:?} | {gbs:.1} |");
            }
        }
    }
}
