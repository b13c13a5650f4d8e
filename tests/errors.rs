//! Every way a user can get the input wrong ends in a typed error that names the problem, never
//! a panic, a hang or a silently wrong result.

mod common;

use compositional_attention::io::{F32Tensor, Input};
use compositional_attention::testing::random_problem;
use compositional_attention::weights::{self, Weights};
use compositional_attention::{
    CompositionalAttention, Config, Error, GpuContext, GpuOptions, Strategy,
};

fn small() -> Config {
    Config::new(16)
        .dim_head(4)
        .num_searches(2)
        .num_retrievals(2)
}

fn layer() -> CompositionalAttention {
    CompositionalAttention::new(common::gpu(), &Weights::random(small(), 1).unwrap()).unwrap()
}

#[test]
fn input_of_the_wrong_length() {
    let mut layer = layer();
    let x = vec![0.5f32; 2 * 5 * 16 - 1];
    match layer.forward_blocking(&x, 2, 5, None) {
        Err(Error::Shape {
            name,
            expected,
            found,
        }) => {
            assert_eq!(name, "input");
            assert_eq!(expected, [2, 5, 16]);
            assert_eq!(found, [159]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_batch_or_sequence() {
    let mut layer = layer();
    for (batch, seq) in [(0, 5), (2, 0)] {
        assert!(matches!(
            layer.forward_blocking(&[], batch, seq, None),
            Err(Error::Shape { .. })
        ));
    }
}

#[test]
fn mask_of_the_wrong_length() {
    let mut layer = layer();
    let x = vec![0.5f32; 2 * 5 * 16];
    let mask = vec![true; 9];
    match layer.forward_blocking(&x, 2, 5, Some(&mask)) {
        Err(Error::Shape { name, expected, .. }) => {
            assert_eq!(name, "mask");
            assert_eq!(expected, [2, 5]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn non_finite_input() {
    let mut layer = layer();
    let mut x = vec![0.5f32; 5 * 16];
    x[17] = f32::NAN;
    assert!(matches!(
        layer.forward_blocking(&x, 1, 5, None),
        Err(Error::NonFinite { index: 17, .. })
    ));
    x[17] = f32::INFINITY;
    assert!(layer.forward_blocking(&x, 1, 5, None).is_err());
}

#[test]
fn input_width_mismatch() {
    let mut layer = layer();
    let input = Input {
        batch: 1,
        seq: 3,
        dim: 12,
        x: vec![0.25; 36],
        mask: None,
    };
    assert!(matches!(
        pollster::block_on(layer.forward_input(&input)),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn invalid_configurations() {
    for config in [
        Config::new(0),
        small().dim_head(0),
        small().num_searches(0),
        small().num_retrievals(0),
        small().dropout(1.5),
    ] {
        assert!(
            matches!(Weights::random(config, 0), Err(Error::InvalidConfig { .. })),
            "{config:?}"
        );
    }
}

/// Re-serialises `weights` with one tensor changed by `edit` (or dropped when it returns None).
fn edited(
    weights: &Weights,
    target: &str,
    edit: impl Fn(Vec<usize>, Vec<f32>) -> Option<(Vec<usize>, Vec<f32>)>,
) -> Vec<u8> {
    let owned: Vec<(String, Vec<usize>, Vec<f32>)> = weights
        .named_tensors()
        .into_iter()
        .filter_map(|(name, tensor)| {
            let shape = safetensors::View::shape(&tensor).to_vec();
            let data: Vec<f32> = bytemuck::cast_slice(&safetensors::View::data(&tensor)).to_vec();
            if name == target {
                edit(shape, data).map(|(s, d)| (name.to_string(), s, d))
            } else {
                Some((name.to_string(), shape, data))
            }
        })
        .collect();
    let views: Vec<_> = owned
        .iter()
        .map(|(name, shape, data)| (name.clone(), F32Tensor::new(shape.clone(), data)))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn missing_tensor_is_named() {
    let w = Weights::random(small(), 2).unwrap();
    let bytes = edited(&w, weights::OUT, |_, _| None);
    match Weights::from_safetensors(&bytes, false, "") {
        Err(Error::MissingTensor { name, .. }) => assert_eq!(name, weights::OUT),
        other => panic!("{other:?}"),
    }
}

#[test]
fn misshaped_tensor_is_named() {
    let w = Weights::random(small(), 3).unwrap();
    let bytes = edited(&w, weights::SEARCH_KEYS, |_, data| {
        Some((vec![8, 15], data[..120].to_vec()))
    });
    match Weights::from_safetensors(&bytes, false, "") {
        Err(Error::Shape {
            name,
            expected,
            found,
        }) => {
            assert_eq!(name, weights::SEARCH_KEYS);
            assert_eq!(expected, [8, 16]);
            assert_eq!(found, [8, 15]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn inconsistent_head_width_is_a_config_mismatch() {
    let w = Weights::random(small(), 4).unwrap();
    // W_rk [3, 3] says d = 3, but W_sq has 8 rows: not a multiple of 3.
    let bytes = edited(&w, weights::RETRIEVAL_KEYS, |_, data| {
        Some((vec![3, 3], data[..9].to_vec()))
    });
    assert!(matches!(
        Weights::from_safetensors(&bytes, false, ""),
        Err(Error::ConfigMismatch(_))
    ));
}

#[test]
fn unknown_tensor_is_named() {
    let w = Weights::random(small(), 5).unwrap();
    let extra = [1.0f32, 2.0];
    let mut tensors: Vec<(String, F32Tensor<'_>)> = w
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
    tensors.push(("to_values.weight".into(), F32Tensor::new(vec![2], &extra)));
    let bytes = safetensors::serialize(tensors, None).unwrap();
    match Weights::from_safetensors(&bytes, false, "") {
        Err(Error::UnexpectedTensor { name, .. }) => assert_eq!(name, "to_values.weight"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn non_finite_weights_are_rejected() {
    let w = Weights::random(small(), 6).unwrap();
    let bytes = edited(&w, weights::SEARCH_QUERIES, |shape, mut data| {
        data[3] = f32::NAN;
        Some((shape, data))
    });
    assert!(matches!(
        Weights::from_safetensors(&bytes, false, ""),
        Err(Error::NonFinite { index: 3, .. })
    ));
}

#[test]
fn wrong_dtype_and_bad_mask_values() {
    let ints = [1i32, 2, 3, 4];
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::I32,
        vec![1, 1, 4],
        bytemuck::cast_slice(&ints),
    )
    .unwrap();
    let bytes = safetensors::serialize([("input", view)], None).unwrap();
    assert!(matches!(
        Input::from_safetensors(&bytes),
        Err(Error::Dtype { .. })
    ));

    let x = [0.5f32; 4];
    let mask = [1u8, 2];
    let view = |dtype, shape: Vec<usize>, data: &'static [u8]| {
        safetensors::tensor::TensorView::new(dtype, shape, data).unwrap()
    };
    let x_bytes: &'static [u8] = Box::leak(bytemuck::cast_slice(&x).to_vec().into_boxed_slice());
    let mask_bytes: &'static [u8] = Box::leak(mask.to_vec().into_boxed_slice());
    let bytes = safetensors::serialize(
        [
            (
                "input",
                view(safetensors::Dtype::F32, vec![1, 2, 2], x_bytes),
            ),
            ("mask", view(safetensors::Dtype::U8, vec![1, 2], mask_bytes)),
        ],
        None,
    )
    .unwrap();
    assert!(matches!(
        Input::from_safetensors(&bytes),
        Err(Error::InvalidMask {
            index: 1,
            value: 2,
            ..
        })
    ));
}

#[test]
fn truncated_file() {
    let bytes = Weights::random(small(), 7)
        .unwrap()
        .to_safetensors()
        .unwrap();
    assert!(matches!(
        Weights::from_safetensors(&bytes[..bytes.len() / 2], false, ""),
        Err(Error::Safetensors(_))
    ));
    assert!(matches!(
        Weights::load("/no/such/file.safetensors", false),
        Err(Error::Io { .. })
    ));
}

#[test]
fn no_adapter_names_the_fix() {
    let options = GpuOptions {
        adapter_name: Some("no-such-adapter-anywhere".into()),
        ..GpuOptions::default()
    };
    match pollster::block_on(GpuContext::new(&options)) {
        Err(e @ Error::NoAdapter { .. }) => {
            let message = e.to_string();
            assert!(message.contains("mesa-vulkan-drivers"), "{message}");
            assert!(message.contains("no-such-adapter-anywhere"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn problems_over_the_device_limits() {
    // The unfused strategy's b·s·n² logits cannot fit any device at n = 40 000.
    let config = Config::new(8).dim_head(4).num_searches(8).num_retrievals(1);
    let (weights, input) = random_problem(config, 1, 40_000, None, 1.0, 8).unwrap();
    let mut layer = CompositionalAttention::new(common::gpu(), &weights).unwrap();
    layer.set_strategy(Strategy::Unfused);
    match pollster::block_on(layer.forward_input(&input)) {
        Err(Error::LimitExceeded { what, .. }) => assert!(what.contains("search logits"), "{what}"),
        other => panic!("{other:?}"),
    }
    // The layer is still usable for a shape that fits.
    let (_, small_input) = random_problem(config, 1, 9, None, 1.0, 8).unwrap();
    pollster::block_on(layer.forward_input(&small_input)).unwrap();
}
