//! A soak sized for CI, alone in its test binary: RSS is a property of the whole process, so no
//! other test may allocate beside it while it samples.

mod common;

use common::{gpu, seed};

/// A soak sized for CI: 300 forwards on one layer cycling five shapes (masks and padding among
/// them) and both strategies, more combinations than the layer keeps workspaces for. Every
/// output is checked; host memory and `gpu_bytes` stay flat after the warm-up round.
#[test]
fn soak_memory_stays_flat() {
    let (seed, what) = seed("soak");
    let report =
        compositional_attention::testing::soak::run(gpu(), 300, seed, 1e-4, |_| {}).unwrap();
    assert_eq!(report.forwards, 300);
    assert!(report.samples.len() >= 10, "{what}: {:?}", report.samples);
    assert_eq!(report.gpu_growth(), 0, "{what}: gpu_bytes grew: {report:?}");
    assert!(
        report.rss_growth() < 16 << 20,
        "{what}: host memory grew by {} bytes: {report:?}",
        report.rss_growth()
    );
}
