//! The image reference grammar both backends share: no input panics, and what is accepted is
//! a fixed point (normalising the output gives the same reference).
#![no_main]

use esb_runtime::image_ref::ImageRef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = ImageRef::normalize(raw, "127.0.0.1:5000") {
        let again = ImageRef::normalize(&r.whole(), "127.0.0.1:5000")
            .expect("an accepted reference must parse again");
        assert_eq!(again, r, "not a fixed point: {raw:?}");
    }
});
