//! Perceptual loss (placeholder; filled in below).
