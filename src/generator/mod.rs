//! The generator: DiT^DH trained with rectified flow on RecTok's normalised latents, its transport
//! (time conventions, shifts, loss), ODE samplers and guidance.

pub mod dit_dh;
pub mod guidance;
pub mod sampler;
pub mod transport;

pub use dit_dh::{DitDh, DitDhConfig};
pub use guidance::Guidance;
pub use sampler::{Integrator, sample_ode};
