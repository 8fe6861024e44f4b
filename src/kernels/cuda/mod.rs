//! The CUDA backend (feature `cuda`; issue 15): which GPUs the driver sees ([`devices`]), the CUDA C sources of
//! the kernels ([`sources`]), their compilation to PTX with NVRTC ([`compile`]) and their loading into a GPU's
//! context ([`module`]; compiled PTX kept on disk by [`ptx_cache`]), cuBLAS's GEMM ([`gemm`]), the launches
//! ([`ops`]), and all of it behind `kernels::backend::Backend` ([`backend::Cuda`]), which `network::device` runs
//! `--device cuda` on; [`profile`] times it op by op (`CONDLM_CUDA_PROFILE=1`).
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
pub mod profile;
pub mod ptx_cache;
pub mod sources;
