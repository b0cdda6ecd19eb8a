//! Agreement between redundant outputs and the search for a quorum among them.

use fleetmesh_protocol::NodeId;
use fleetmesh_protocol::messages::AgreementRule;

/// Why an output could not be compared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputError {
    /// A numeric rule needs little-endian f32 values, but the length is not a multiple of 4.
    #[error("output of {0} bytes is not a sequence of f32 values")]
    NotF32(usize),
    /// A numeric output holds NaN or infinity.
    #[error("output holds a non-finite value at index {0}")]
    NonFinite(usize),
    /// A numeric output is empty.
    #[error("output is empty")]
    Empty,
}

/// Reads an output as little-endian f32 values, rejecting odd lengths and non-finite values.
pub fn f32_values(output: &[u8]) -> Result<Vec<f32>, OutputError> {
    if output.is_empty() {
        return Err(OutputError::Empty);
    }
    if !output.len().is_multiple_of(4) {
        return Err(OutputError::NotF32(output.len()));
    }
    let values: Vec<f32> = output
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(OutputError::NonFinite(i)),
        None => Ok(values),
    }
}

fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// Whether two outputs of the same job agree under `rule`.
///
/// Outputs that cannot be read as the rule requires (odd length, NaN) never agree with anything.
pub fn agree(rule: &AgreementRule, a: &[u8], b: &[u8]) -> bool {
    if let AgreementRule::Exact = rule {
        return a == b;
    }
    let (Ok(x), Ok(y)) = (f32_values(a), f32_values(b)) else {
        return false;
    };
    if x.len() != y.len() {
        return false;
    }
    match *rule {
        AgreementRule::Exact => unreachable!("handled above"),
        AgreementRule::Argmax => argmax(&x) == argmax(&y),
        AgreementRule::Tolerance { abs, rel, min_cosine } => {
            if min_cosine > 0.0 {
                let dot: f64 = x.iter().zip(&y).map(|(p, q)| f64::from(*p) * f64::from(*q)).sum();
                let nx: f64 = x.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
                let ny: f64 = y.iter().map(|q| f64::from(*q).powi(2)).sum::<f64>().sqrt();
                nx > 0.0 && ny > 0.0 && dot / (nx * ny) >= f64::from(min_cosine)
            } else {
                x.iter()
                    .zip(&y)
                    .all(|(p, q)| (p - q).abs() <= abs + rel * p.abs().max(q.abs()))
            }
        }
    }
}

/// Finds the largest group of workers whose outputs agree with one member of the group (its
/// representative), if that group has at least `needed` distinct workers.
///
/// Groups are built in input order, each output joining the first group whose representative it agrees
/// with, so the result is a pure function of the inputs and their order. Returns the representative's
/// index into `outputs` and the members.
pub fn find_quorum(
    rule: &AgreementRule,
    outputs: &[(NodeId, &[u8])],
    needed: usize,
) -> Option<(usize, Vec<NodeId>)> {
    let mut groups: Vec<(usize, Vec<NodeId>)> = Vec::new();
    for (i, (worker, output)) in outputs.iter().enumerate() {
        match groups
            .iter_mut()
            .find(|(rep, _)| agree(rule, outputs[*rep].1, output))
        {
            Some((_, members)) => {
                if !members.contains(worker) {
                    members.push(*worker);
                }
            }
            None => groups.push((i, vec![*worker])),
        }
    }
    groups
        .into_iter()
        .filter(|(_, m)| m.len() >= needed.max(1))
        .max_by_key(|(rep, m)| (m.len(), usize::MAX - rep))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmesh_protocol::NodeKey;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn node(i: u8) -> NodeId {
        NodeKey::from_seed([i; 32]).node_id()
    }

    #[test]
    fn exact_needs_identical_bytes() {
        assert!(agree(&AgreementRule::Exact, b"abc", b"abc"));
        assert!(!agree(&AgreementRule::Exact, b"abc", b"abd"));
    }

    #[test]
    fn argmax_compares_the_winning_index() {
        let a = f32s(&[0.1, 0.9, 0.0]);
        let b = f32s(&[0.2, 0.7, 0.1]);
        let c = f32s(&[0.9, 0.1, 0.0]);
        assert!(agree(&AgreementRule::Argmax, &a, &b));
        assert!(!agree(&AgreementRule::Argmax, &a, &c));
        assert!(!agree(&AgreementRule::Argmax, &a, b"xyz"));
        assert!(!agree(
            &AgreementRule::Argmax,
            &f32s(&[f32::NAN]),
            &f32s(&[f32::NAN])
        ));
    }

    #[test]
    fn tolerance_by_elements_and_by_cosine() {
        let abs = AgreementRule::Tolerance {
            abs: 1e-3,
            rel: 0.0,
            min_cosine: 0.0,
        };
        assert!(agree(&abs, &f32s(&[1.0, 2.0]), &f32s(&[1.0005, 2.0])));
        assert!(!agree(&abs, &f32s(&[1.0, 2.0]), &f32s(&[1.01, 2.0])));
        let cos = AgreementRule::Tolerance {
            abs: 0.0,
            rel: 0.0,
            min_cosine: 0.9999,
        };
        assert!(agree(&cos, &f32s(&[1.0, 2.0]), &f32s(&[2.0, 4.0])));
        assert!(!agree(&cos, &f32s(&[1.0, 0.0]), &f32s(&[0.0, 1.0])));
    }

    #[test]
    fn quorum_picks_the_largest_agreeing_group_of_distinct_workers() {
        let good = b"good".as_slice();
        let bad = b"bad".as_slice();
        let outputs = [(node(1), bad), (node(2), good), (node(3), good), (node(3), good)];
        let (rep, members) = find_quorum(&AgreementRule::Exact, &outputs, 2).unwrap();
        assert_eq!(rep, 1);
        assert_eq!(members, vec![node(2), node(3)]);
        // the same worker twice is not two votes
        let dup = [(node(1), good), (node(1), good)];
        assert!(find_quorum(&AgreementRule::Exact, &dup, 2).is_none());
    }
}
