//! The read-only HDF5 reader (`hdf5::read_datasets`) and the Keras `.weights.h5` reader on top of
//! it. Seeds: tests/golden-variants/keras/*.weights.h5 and tests/hdf5-fixtures/*.h5.
#![no_main]

use compositional_attention::checkpoint::{Checkpoint, CheckpointOptions};
use compositional_attention::hdf5;
use compositional_attention_fuzz::{check_checkpoint, guarded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let datasets = guarded(data.len(), || hdf5::read_datasets(data));
    if let Ok(datasets) = &datasets {
        for d in datasets {
            let elements = d.shape.iter().try_fold(1usize, |n, &s| n.checked_mul(s));
            assert_eq!(elements, Some(d.data.len()), "{}", d.path);
        }
    }
    let result = guarded(data.len(), || {
        Checkpoint::from_keras_h5(data, &CheckpointOptions::default())
    });
    check_checkpoint(&result);
});
