//! Optional capture of intermediate activations, named like the reference's submodules.
//!
//! The golden cases of the reference compare intermediate outputs (`out.dbg.<submodule>`) to help
//! locate a mismatch. Model `forward_traced` methods record into a [`Trace`]; the plain `forward`
//! passes a disabled one, which costs nothing.

use burn::tensor::{Tensor, TensorData};

/// A list of `(name, value)` activations, or nothing when disabled.
#[derive(Default)]
pub struct Trace {
    entries: Option<Vec<(String, TensorData)>>,
}

impl Trace {
    /// A trace that records nothing.
    pub fn off() -> Self {
        Self { entries: None }
    }

    /// A trace that records every activation it is given.
    pub fn on() -> Self {
        Self { entries: Some(Vec::new()) }
    }

    /// Whether recording is enabled.
    pub fn enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// Records `value` under `name` if enabled.
    pub fn record<const D: usize>(&mut self, name: &str, value: &Tensor<D>) {
        if let Some(entries) = self.entries.as_mut() {
            // A copy of the bytes: on wgpu the data read back may share memory that a later
            // in-place update of the same tensor overwrites.
            let data = crate::device::read_back(value.clone());
            let copy = TensorData::from_bytes_vec(data.as_bytes().to_vec(), data.shape().clone(), data.dtype());
            entries.push((name.to_string(), copy));
        }
    }

    /// The recorded activations.
    pub fn into_entries(self) -> Vec<(String, TensorData)> {
        self.entries.unwrap_or_default()
    }
}
