//! The simulator's one source of randomness: splitmix64, seeded, so that a seed gives one run.

use fleetmesh_consensus::assign::Randomness;

/// splitmix64.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x5EED_F1EE_7EE5_0001)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `[0, n)` (`n` > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * n as f64) as usize % n.max(1)
    }

    /// Exponentially distributed with this mean.
    pub(crate) fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).max(1e-300).ln()
    }

    /// Poisson with this mean (Knuth's method below 30, a rounded normal above).
    pub(crate) fn poisson(&mut self, mean: f64) -> usize {
        if mean <= 0.0 {
            return 0;
        }
        if mean < 30.0 {
            let limit = (-mean).exp();
            let (mut k, mut p) = (0usize, 1.0);
            loop {
                p *= self.unit();
                if p <= limit {
                    return k;
                }
                k += 1;
            }
        }
        // Box-Muller.
        let (u, v) = (self.unit().max(1e-300), self.unit());
        let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
        (mean + z * mean.sqrt()).round().max(0.0) as usize
    }
}

impl Randomness for Rng {
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// splitmix64's finaliser: a good 64-bit hash of `z`.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in `[0, 1)` from a hash of these values (draws that must not depend on event order).
pub(crate) fn unit_of(a: u64, b: u64, c: u64) -> f64 {
    (mix(a ^ mix(b ^ mix(c))) >> 11) as f64 / (1u64 << 53) as f64
}
