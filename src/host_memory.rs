//! Host allocations sized by a caller's numbers.
//!
//! `vec![0.0; n]` aborts the process when the allocator says no: an extra zero in a size would
//! kill a program (or the command line) with `memory allocation of … bytes failed`. Every host
//! buffer whose length comes from user input (random weights, random problems, the readers'
//! tensors, the bench's inputs) is made here instead: the length is multiplied in checked
//! `u64`, reserved with `try_reserve_exact`, and a request the machine cannot satisfy is
//! [`Error::HostMemory`], with nothing allocated.

use crate::error::{Error, Result};

/// The bytes of `dims` elements of `element_bytes` each, in checked `u64` (`u64::MAX` when the
/// product overflows, which no machine can allocate).
pub fn bytes_of(dims: &[usize], element_bytes: usize) -> u64 {
    dims.iter()
        .try_fold(element_bytes as u64, |acc, &d| acc.checked_mul(d as u64))
        .unwrap_or(u64::MAX)
}

/// An empty vector with room for exactly `len` elements, or [`Error::HostMemory`] naming `what`.
pub fn try_with_capacity<T>(what: &str, len: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::HostMemory {
        what: what.to_string(),
        bytes: bytes_of(&[len], std::mem::size_of::<T>()),
        hint: None,
    })?;
    Ok(v)
}

/// `len` copies of `value`, or [`Error::HostMemory`] naming `what`.
pub fn try_filled<T: Clone>(what: &str, len: usize, value: T) -> Result<Vec<T>> {
    let mut v = try_with_capacity(what, len)?;
    v.resize(len, value);
    Ok(v)
}

/// The product of `dims` as a `usize` element count, or [`Error::HostMemory`] naming `what` when
/// it does not fit this target's address space (so a size cannot wrap before it is allocated).
pub fn element_count(what: &str, dims: &[usize], element_bytes: usize) -> Result<usize> {
    let bytes = bytes_of(dims, element_bytes);
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match count {
        Some(count) if bytes <= isize::MAX as u64 => Ok(count),
        _ => Err(Error::HostMemory {
            what: what.to_string(),
            bytes,
            hint: None,
        }),
    }
}

/// [`try_filled`] for a tensor of shape `dims`.
pub fn try_tensor<T: Clone>(what: &str, dims: &[usize], value: T) -> Result<Vec<T>> {
    let len = element_count(what, dims, std::mem::size_of::<T>())?;
    try_filled(what, len, value)
}

/// Whether this machine can give `bytes` of host memory now: they are reserved with
/// `try_reserve_exact` and released at once, and a refusal is [`Error::HostMemory`] naming
/// `what` with `hint`. A program asks this once, for the total, before it makes a problem of a
/// user's size in many allocations (weights, inputs, a reference's intermediates), so that an
/// impossible total is an error before anything is made. It is a probe, not a promise: the
/// allocations that follow may still fail (they should use [`try_filled`] and friends).
pub fn check_available(what: &str, bytes: u64, hint: Option<&'static str>) -> Result<()> {
    let refused = || Error::HostMemory {
        what: what.to_string(),
        bytes,
        hint,
    };
    let len = usize::try_from(bytes)
        .ok()
        .filter(|&len| len <= isize::MAX as usize)
        .ok_or_else(refused)?;
    let mut probe: Vec<u8> = Vec::new();
    probe.try_reserve_exact(len).map_err(|_| refused())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_impossible_size_is_an_error_not_an_abort() {
        // 2^61 f32 elements: more than any machine, and past isize::MAX bytes.
        let err = try_filled::<f32>("input", 1usize << 61, 0.0).unwrap_err();
        assert!(
            matches!(err, Error::HostMemory { ref what, .. } if what == "input"),
            "{err}"
        );
        let err = try_tensor::<f32>("input", &[100_000, 4096, 1_000_000], 0.0).unwrap_err();
        assert!(err.to_string().contains("input needs"), "{err}");
        let err = try_tensor::<f32>("x", &[usize::MAX, 2], 0.0).unwrap_err();
        assert!(
            matches!(
                err,
                Error::HostMemory {
                    bytes: u64::MAX,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn an_impossible_total_is_refused_up_front() {
        let err = check_available("problem", u64::MAX, Some("lower --seq")).unwrap_err();
        assert!(err.to_string().contains("lower --seq"), "{err}");
        let err = check_available("problem", 1 << 62, None).unwrap_err();
        assert!(
            matches!(err, Error::HostMemory { bytes, .. } if bytes == 1 << 62),
            "{err}"
        );
        check_available("problem", 1 << 20, None).unwrap();
    }

    #[test]
    fn a_possible_size_is_filled() {
        let v = try_tensor("x", &[3, 5], 1.5f32).unwrap();
        assert_eq!(v, vec![1.5; 15]);
        assert_eq!(bytes_of(&[3, 5], 4), 60);
    }
}
