//! `.npy` files: every reader of the library on any bytes.
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = common::file("x.npy", data);
    match lipattn::npy::read_npy(&p) {
        Ok(a) => assert_eq!(
            Some(a.data.len()),
            a.shape.iter().try_fold(1usize, |x, &s| x.checked_mul(s))
        ),
        Err(e) => common::message(e),
    }
    let _ = lipattn::npy::read_matrix(&p).map_err(common::message);
    let _ = lipattn::npy::read_vector(&p).map_err(common::message);
});
