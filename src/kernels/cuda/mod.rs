//! The CUDA backend (feature `cuda`; issue 15): which GPUs the driver sees ([`devices`]), the CUDA C sources of
//! the kernels ([`sources`]), their compilation to PTX with NVRTC ([`compile`]) and their loading into a GPU's
//! context ([`module`]), cuBLAS's GEMM ([`gemm`]), the launches ([`ops`]), and all of it behind
//! `kernels::backend::Backend` ([`backend::Cuda`]). Not yet wired into training or decoding: `condlm info
//! --devices --check-kernels` and the NVRTC test (tests/cuda_ptx.rs, scripts/cuda/ptx_check.sh) are its only
//! users for now.
//!
//! cudarc loads libcuda and libnvrtc at run time (`dlopen`), so a build needs no CUDA toolkit and the binary
//! starts on machines without one; every entry point here checks that its library loads before calling into it ([`devices::probe`] for the
//! driver: create a context only on a GPU it listed).
pub mod backend;
pub mod compile;
pub mod device;
pub mod devices;
pub mod gemm;
pub mod module;
pub mod ops;
pub mod ptx_cache;
pub mod sources;
