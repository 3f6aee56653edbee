//! The combines of a fan-out step: one tensor from the same output of every
//! member that answered. Pure arithmetic on raw little-endian tensor bytes;
//! a member whose tensor does not fit the others is the caller's 400/502.

use bytes::Bytes;
use switchyard_config::CombineOp;
use switchyard_runtime::tensor::{DataType, Tensor};

/// One member's share: its tensor and its weight.
pub struct Vote<'a> {
    pub tensor: &'a Tensor,
    pub weight: f64,
}

/// The numbers of a numeric tensor, widened to f64; `None` for BYTES, FP16,
/// BF16 and tensors in shared memory (which a step never answers with).
pub fn values(t: &Tensor) -> Option<Vec<f64>> {
    fn le<const N: usize>(d: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
        d.chunks_exact(N).map(|c| f(c.try_into().expect("chunk of N"))).collect()
    }
    let d = &t.data[..];
    Some(match t.datatype {
        DataType::Bool | DataType::Uint8 => d.iter().map(|b| f64::from(*b)).collect(),
        DataType::Int8 => d.iter().map(|b| f64::from(*b as i8)).collect(),
        DataType::Int16 => le(d, |b| f64::from(i16::from_le_bytes(b))),
        DataType::Uint16 => le(d, |b| f64::from(u16::from_le_bytes(b))),
        DataType::Int32 => le(d, |b| f64::from(i32::from_le_bytes(b))),
        DataType::Uint32 => le(d, |b| f64::from(u32::from_le_bytes(b))),
        DataType::Int64 => le(d, |b| i64::from_le_bytes(b) as f64),
        DataType::Uint64 => le(d, |b| u64::from_le_bytes(b) as f64),
        DataType::Fp32 => le(d, |b| f64::from(f32::from_le_bytes(b))),
        DataType::Fp64 => le(d, f64::from_le_bytes),
        DataType::Fp16 | DataType::Bf16 | DataType::Bytes => return None,
    })
}

/// Combines the members' tensors into one named `output`; `Err` says why they do not fit.
pub fn combine(op: CombineOp, output: &str, votes: &[Vote<'_>]) -> Result<Tensor, String> {
    let first = votes.first().ok_or("no member answered")?;
    let mut all = Vec::with_capacity(votes.len());
    for v in votes {
        let x = values(v.tensor)
            .ok_or_else(|| format!("`{}` is {}: a combine takes numbers", v.tensor.name, v.tensor.datatype.as_str()))?;
        if x.len() as i64 != v.tensor.shape.iter().product::<i64>() {
            return Err(format!("`{}` holds {} values for shape {:?}", v.tensor.name, x.len(), v.tensor.shape));
        }
        all.push(x);
    }
    let shape = &first.tensor.shape;
    match op {
        CombineOp::Average | CombineOp::Max => {
            if let Some(v) = votes.iter().find(|v| &v.tensor.shape != shape) {
                return Err(format!("shapes differ: {:?} and {:?}", shape, v.tensor.shape));
            }
            let n = all[0].len();
            let out: Vec<f64> = if op == CombineOp::Max {
                (0..n).map(|i| all.iter().map(|x| x[i]).fold(f64::NEG_INFINITY, f64::max)).collect()
            } else {
                let total: f64 = votes.iter().map(|v| v.weight).sum();
                (0..n).map(|i| all.iter().zip(votes).map(|(x, v)| x[i] * v.weight).sum::<f64>() / total).collect()
            };
            Ok(fp32(output, shape.clone(), &out))
        }
        CombineOp::Concat => {
            let (_, lead) = shape.split_last().ok_or("a scalar cannot be concatenated")?;
            let mut width = 0;
            for v in votes {
                match v.tensor.shape.split_last() {
                    Some((w, l)) if l == lead => width += w,
                    _ => {
                        return Err(format!("shapes differ before the last axis: {:?} and {:?}", shape, v.tensor.shape))
                    }
                }
            }
            let rows: i64 = lead.iter().product();
            let mut out = Vec::with_capacity(all.iter().map(Vec::len).sum());
            for r in 0..rows as usize {
                for (x, v) in all.iter().zip(votes) {
                    let w = *v.tensor.shape.last().expect("checked") as usize;
                    out.extend_from_slice(&x[r * w..(r + 1) * w]);
                }
            }
            let mut s = lead.to_vec();
            s.push(width);
            Ok(fp32(output, s, &out))
        }
        CombineOp::MajorityVote | CombineOp::WeightedVote => {
            let mut rows_of = None;
            let mut labels = Vec::with_capacity(votes.len());
            for (x, v) in all.iter().zip(votes) {
                let l = choices(x, &v.tensor.shape)?;
                match rows_of {
                    None => rows_of = Some(l.len()),
                    Some(r) if r != l.len() => return Err(format!("members answered {r} and {} rows", l.len())),
                    Some(_) => {}
                }
                labels.push(l);
            }
            let rows = rows_of.unwrap_or(0);
            let weight = |v: &Vote<'_>| if op == CombineOp::MajorityVote { 1.0 } else { v.weight };
            let winners: Vec<i64> = (0..rows)
                .map(|r| {
                    let mut tally: Vec<(i64, f64)> = Vec::new();
                    for (l, v) in labels.iter().zip(votes) {
                        match tally.iter_mut().find(|(c, _)| *c == l[r]) {
                            Some(t) => t.1 += weight(v),
                            None => tally.push((l[r], weight(v))),
                        }
                    }
                    // Most weight wins; a tie goes to the lowest class.
                    tally.into_iter().max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0))).map_or(0, |t| t.0)
                })
                .collect();
            let data: Vec<u8> = winners.iter().flat_map(|w| w.to_le_bytes()).collect();
            Ok(Tensor::new(output, DataType::Int64, vec![rows as i64], Bytes::from(data)))
        }
    }
}

/// Each row's choice: the argmax of a `[rows, classes]` score tensor, or the
/// label itself in a `[rows]` or `[rows, 1]` tensor of class numbers.
fn choices(x: &[f64], shape: &[i64]) -> Result<Vec<i64>, String> {
    match shape {
        [_] | [_, 1] => Ok(x.iter().map(|v| *v as i64).collect()),
        [rows, classes] if *classes > 1 => Ok((0..*rows as usize)
            .map(|r| {
                let row = &x[r * *classes as usize..(r + 1) * *classes as usize];
                // First of the highest scores, as numpy's argmax.
                let mut best = 0;
                for (i, v) in row.iter().enumerate() {
                    if *v > row[best] {
                        best = i;
                    }
                }
                best as i64
            })
            .collect()),
        _ => Err(format!("a vote takes [rows, classes] scores or [rows] labels, not shape {shape:?}")),
    }
}

fn fp32(name: &str, shape: Vec<i64>, x: &[f64]) -> Tensor {
    let data: Vec<u8> = x.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect();
    Tensor::new(name, DataType::Fp32, shape, Bytes::from(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, shape: Vec<i64>, x: &[f32]) -> Tensor {
        fp32(name, shape, &x.iter().map(|v| f64::from(*v)).collect::<Vec<_>>())
    }

    fn ints(t: &Tensor) -> Vec<i64> {
        values(t).unwrap().into_iter().map(|v| v as i64).collect()
    }

    #[test]
    fn weighted_vote_lets_the_heavier_voter_win_and_ties_go_low() {
        let a = t("p", vec![2, 3], &[0.7, 0.2, 0.1, 0.1, 0.1, 0.8]);
        let b = t("p", vec![2, 3], &[0.1, 0.8, 0.1, 0.1, 0.8, 0.1]);
        let c = t("p", vec![2, 3], &[0.1, 0.8, 0.1, 0.9, 0.05, 0.05]);
        let votes =
            [Vote { tensor: &a, weight: 3.0 }, Vote { tensor: &b, weight: 1.0 }, Vote { tensor: &c, weight: 1.0 }];
        // Weighted: `a` (3) outweighs the other two together on both rows.
        assert_eq!(ints(&combine(CombineOp::WeightedVote, "v", &votes).unwrap()), vec![0, 2]);
        // Unweighted: row 0 → class 1 (two votes); row 1 → a three-way tie → class 0.
        assert_eq!(ints(&combine(CombineOp::MajorityVote, "v", &votes).unwrap()), vec![1, 0]);
    }

    #[test]
    fn average_max_and_concat() {
        let a = t("p", vec![1, 2], &[1.0, 4.0]);
        let b = t("p", vec![1, 2], &[3.0, 0.0]);
        let votes = [Vote { tensor: &a, weight: 1.0 }, Vote { tensor: &b, weight: 3.0 }];
        assert_eq!(values(&combine(CombineOp::Average, "o", &votes).unwrap()).unwrap(), vec![2.5, 1.0]);
        assert_eq!(values(&combine(CombineOp::Max, "o", &votes).unwrap()).unwrap(), vec![3.0, 4.0]);
        let c = combine(CombineOp::Concat, "o", &votes).unwrap();
        assert_eq!((c.shape.clone(), values(&c).unwrap()), (vec![1, 4], vec![1.0, 4.0, 3.0, 0.0]));
    }

    #[test]
    fn misfits_are_refused() {
        let a = t("p", vec![1, 2], &[1.0, 4.0]);
        let b = t("p", vec![2, 2], &[3.0, 0.0, 1.0, 1.0]);
        let votes = [Vote { tensor: &a, weight: 1.0 }, Vote { tensor: &b, weight: 1.0 }];
        assert!(combine(CombineOp::Average, "o", &votes).unwrap_err().contains("shapes differ"));
        assert!(combine(CombineOp::MajorityVote, "o", &votes).unwrap_err().contains("rows"));
    }
}
