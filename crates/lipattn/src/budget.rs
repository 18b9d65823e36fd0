//! The memory budget: every size that drives an allocation (tokens, width, heads, atoms, probes,
//! transport sizes, recorded states) is turned into an estimate of the bytes it needs and
//! checked here before anything is allocated, so that an oversized request is an error that
//! names the option, the need and the budget, never an abort of the process (an allocation
//! failure in Rust aborts, taking a Python interpreter with it).
//!
//! The budget is, in order: what [`set_max_memory`] set (the CLI's `--max-memory`,
//! `lipattn.set_max_memory` in Python), else the environment variable `LIPATTN_MAX_MEMORY`
//! (bytes, or with a K/M/G/T suffix), else [`DEFAULT_FRACTION`] of the memory the system reports
//! available when the check runs (`MemAvailable` in /proc/meminfo; [`FALLBACK_BYTES`] where that
//! cannot be read).
//!
//! The estimates count the large buffers of a computation (n x n score matrices per head, the
//! stored states of a trajectory, dense cost matrices), not every small vector: they are meant to
//! catch requests that cannot fit, orders of magnitude too large, not to account byte for byte.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};

/// Share of the available memory one request may plan to use by default.
pub const DEFAULT_FRACTION: f64 = 0.5;

/// The budget where the available memory cannot be read (not Linux): 4 GiB.
pub const FALLBACK_BYTES: u64 = 4 << 30;

/// 0: not set.
static MAX_MEMORY: AtomicU64 = AtomicU64::new(0);

/// Sets the budget for this process (None: back to the environment or the default).
pub fn set_max_memory(bytes: Option<u64>) {
    MAX_MEMORY.store(bytes.unwrap_or(0), Ordering::Relaxed);
}

/// The budget in force and where it comes from.
pub fn max_memory() -> Result<(u64, &'static str)> {
    let set = MAX_MEMORY.load(Ordering::Relaxed);
    if set > 0 {
        return Ok((set, "set by --max-memory / set_max_memory"));
    }
    if let Ok(v) = std::env::var("LIPATTN_MAX_MEMORY") {
        let bytes = parse_bytes(&v)
            .map_err(|e| Error::invalid(format!("LIPATTN_MAX_MEMORY='{v}': {e}")))?;
        return Ok((bytes, "LIPATTN_MAX_MEMORY"));
    }
    match available() {
        Some(a) => Ok((
            (a as f64 * DEFAULT_FRACTION) as u64,
            "half of the memory available now",
        )),
        None => Ok((
            FALLBACK_BYTES,
            "the default where available memory is unknown",
        )),
    }
}

fn available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Bytes from "123", "64M", "1.5G", "2T" (binary multiples); positive and finite.
pub fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix '{c}' (use K, M, G or T)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let x: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size in bytes (e.g. 512M, 8G)"))?;
    let bytes = x * mult as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("'{s}' is not a positive size in bytes"));
    }
    Ok(bytes as u64)
}

/// Bytes for `count` values of `bytes_each`, the count a product of sizes; None on overflow.
pub fn bytes_of(sizes: &[usize], bytes_each: u64) -> Option<u64> {
    sizes
        .iter()
        .try_fold(bytes_each, |acc, &s| acc.checked_mul(s as u64))
}

/// Sum of estimates; None if any overflows.
pub fn total(parts: &[Option<u64>]) -> Option<u64> {
    parts
        .iter()
        .try_fold(0u64, |acc, p| p.and_then(|p| acc.checked_add(p)))
}

/// Needs up to this size pass without reading the environment or /proc when no budget was set:
/// the checks sit on paths that run thousands of times (every attention forward), and any
/// machine that runs lipattn has this much.
pub const ALWAYS_ALLOWED: u64 = 64 << 20;

/// `need` bytes (None: beyond u64) for what `what` describes (the sizes that drive it), against
/// the budget. `what` is only formatted when the check fails or has to read the budget, so the
/// check costs no allocation on hot paths.
///
/// A need above [`ALWAYS_ALLOWED`] that passes is then reserved from the system allocator and
/// released at once: Rust aborts the process when an allocation fails, and the buffers this
/// estimate counts are allocated inside faer and the other libraries, infallibly. A system that
/// cannot give the memory now (an address-space limit, strict overcommit, a machine smaller than
/// its reported availability) refuses the reservation instead, and the request ends in
/// [`Error::OutOfMemory`] before any of its work. Reserving maps pages without touching them, so
/// it costs a system call, not the memory.
pub fn check(what: impl FnOnce() -> String, need: Option<u64>) -> Result<()> {
    let set = MAX_MEMORY.load(Ordering::Relaxed);
    if set == 0 && need.is_some_and(|n| n <= ALWAYS_ALLOWED) {
        return Ok(());
    }
    let (budget, origin) = max_memory()?;
    let what = what();
    verdict(&what, need, budget, origin)?;
    match need {
        Some(n) if n > ALWAYS_ALLOWED => reserve(&what, n, budget),
        _ => Ok(()),
    }
}

fn reserve(what: &str, need: u64, budget: u64) -> Result<()> {
    let refused = || Error::OutOfMemory {
        what: what.to_string(),
        need,
        budget,
    };
    let bytes = usize::try_from(need).map_err(|_| refused())?;
    let mut probe: Vec<u8> = Vec::new();
    probe.try_reserve_exact(bytes).map_err(|_| refused())
}

fn verdict(what: &str, need: Option<u64>, budget: u64, origin: &'static str) -> Result<()> {
    match need {
        Some(n) if n <= budget => Ok(()),
        _ => Err(Error::Budget {
            what: what.to_string(),
            need,
            budget,
            origin,
        }),
    }
}

/// "80.0 GB"-style sizes for messages (decimal units, three significant digits).
pub fn human(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut x = bytes as f64;
    let mut u = 0;
    while x >= 1000.0 && u + 1 < units.len() {
        x /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{x:.3} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_bytes("512M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        for bad in ["", "x", "-1G", "0", "nan", "1e30T", "3Q"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert_eq!(human(80_000_000_000), "80.000 GB");
        assert_eq!(human(999), "999 B");
        assert_eq!(bytes_of(&[1 << 40, 1 << 30], 8), None);
        assert_eq!(bytes_of(&[3, 4], 8), Some(96));
        assert_eq!(total(&[Some(1), None]), None);
    }

    // The process-wide setting is tested in tests/budget.rs, in a process of its own: set here,
    // it would constrain the other unit tests running beside this one.
    #[test]
    fn the_budget_is_enforced_and_named() {
        assert!(verdict("n", Some(1000), 1000, "test").is_ok());
        let e = verdict("n = 10", Some(1001), 1000, "test")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("n = 10") && e.contains("1.001 kB") && e.contains("1.000 kB"),
            "{e}"
        );
        let e = verdict("n", None, 1000, "test").unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
        assert!(check(|| "small".into(), Some(1 << 20)).is_ok());
        assert!(reserve("large", 256 << 20, u64::MAX).is_ok());
        // Beyond any address space (2^60 bytes), and beyond what a Vec may hold (2^63): both
        // refused as an error naming the request, not an abort.
        for need in [1u64 << 60, 1 << 63] {
            let e = reserve("n = 7", need, u64::MAX).unwrap_err().to_string();
            assert!(e.contains("n = 7") && e.contains("refused"), "{e}");
        }
        assert!(max_memory().unwrap().0 > 0);
    }
}
