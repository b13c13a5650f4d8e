//! A read-only reader for the subset of HDF5 that Keras 3 checkpoints (`.weights.h5`) use.
//!
//! Keras 3 `model.save_weights("m.weights.h5")` writes through h5py with its default
//! `libver="earliest"`: a version 0 superblock, version 1 object headers, groups as symbol tables
//! (a version 1 B-tree of symbol table nodes, names in a local heap), and every variable as a
//! contiguous little-endian float32 dataset at `layers/<layer>/.../vars/<i>`. The C library
//! (libhdf5) does not build for `wasm32-unknown-unknown`, and the pure-Rust HDF5 crates are young
//! and large for the little needed here, so the reader is this module.
//!
//! Read: superblock versions 0 to 3 (so h5py's `libver="latest"` files too), object header
//! versions 1 and 2 with continuation blocks (version 2 checksums are verified), groups as symbol
//! tables or as link messages in the header ("compact" link storage), contiguous and compact
//! dataset layouts, simple and scalar dataspaces, little-endian IEEE float32 and float64 (float64
//! is rounded to the nearest f32, so beyond f32's range it becomes infinite). Attributes and other
//! metadata are skipped.
//!
//! Refused with [`Error::Hdf5`] naming what and where: chunked and virtual layouts, filters,
//! external storage, dense link storage (a fractal heap, which `libver="latest"` uses for groups
//! of more than 8 links), soft and external links, shared messages (committed datatypes), null
//! dataspaces, and every other datatype.
//!
//! The bytes may be hostile (the reader is fuzzed), so:
//! - every offset and length is checked against the buffer with checked arithmetic, and nothing
//!   is indexed without a check;
//! - nothing is allocated by a declared size before the bytes it describes are known to exist;
//! - the structures of a well-formed file do not overlap, so the reader reads at most as many
//!   bytes (headers, B-tree nodes, names, data) as the file holds: overlapping or repeated
//!   structures cannot multiply its work or its output;
//! - group nesting is bounded, B-tree levels must count down, a B-tree node reached twice is an
//!   error, and an object reached twice (hard links may form cycles) is read once, as h5py's
//!   `visit` does.

mod checksum;
mod file;
mod groups;
mod header;
mod messages;
mod walk;

use std::collections::HashSet;

use crate::error::{Error, Result};
use file::File;
use header::Budget;
use walk::Walk;

/// One dataset of an HDF5 file.
#[derive(Clone, Debug, PartialEq)]
pub struct H5Dataset {
    /// The full path from the root group, without a leading `/`
    /// (`layers/compositional_attention/to_out/vars/0`).
    pub path: String,
    /// The dimensions; empty for a scalar.
    pub shape: Vec<usize>,
    /// The elements in row-major order.
    pub data: Vec<f32>,
}

/// Reads every dataset in an HDF5 file as f32, in path order (the children of each group sorted
/// by name, depth first).
pub fn read_datasets(bytes: &[u8]) -> Result<Vec<H5Dataset>> {
    read(bytes, true)
}

/// [`read_datasets`], optionally without verifying checksums: the tests corrupt version 2
/// structures and want the parser, not the checksum, to meet the damage.
fn read(bytes: &[u8], verify_checksums: bool) -> Result<Vec<H5Dataset>> {
    let file = File::open(bytes, verify_checksums)?;
    let mut walk = Walk {
        file,
        budget: Budget::new(bytes.len()),
        seen_objects: HashSet::new(),
        seen_nodes: HashSet::new(),
        datasets: Vec::new(),
    };
    walk.object(file.root, "", 0)?;
    Ok(walk.datasets)
}

/// Groups nested deeper than this are refused (Keras nests about 5).
const MAX_DEPTH: usize = 64;
/// HDF5's own limit on a dataspace's rank (`H5S_MAX_RANK`).
const MAX_RANK: usize = 32;
/// Continuation blocks per object header.
const MAX_HEADER_BLOCKS: usize = 256;
const SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";

fn err(message: impl Into<String>) -> Error {
    Error::Hdf5(message.into())
}

fn to_usize(value: u64, what: impl FnOnce() -> String) -> Result<usize> {
    usize::try_from(value).map_err(|_| err(format!("{} ({value}) does not fit in memory", what())))
}

#[cfg(test)]
mod tests {
    use super::checksum::lookup3;
    use super::*;
    use crate::rng::Rng;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/hdf5-fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn keras(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/golden-variants/keras/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn message(result: Result<Vec<H5Dataset>>) -> String {
        match result {
            Ok(datasets) => panic!("expected an error, read {} datasets", datasets.len()),
            Err(e) => e.to_string(),
        }
    }

    /// Every `h5_variables` entry of the case's JSON is in the `.weights.h5` with its shape, and
    /// equals the case's safetensors tensor bit for bit; the file holds nothing else.
    #[test]
    fn keras_checkpoints_match_their_safetensors() {
        for case in ["k01_defaults", "k02_prenorm"] {
            let datasets = read_datasets(&keras(&format!("{case}.weights.h5"))).unwrap();
            let json: serde_json::Value =
                serde_json::from_slice(&keras(&format!("{case}.json"))).unwrap();
            let st_bytes = keras(&format!("{case}.safetensors"));
            let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
            let variables = json["h5_variables"].as_array().unwrap();
            assert_eq!(datasets.len(), variables.len(), "{case}: dataset count");
            for v in variables {
                let path = v["h5_dataset"].as_str().unwrap();
                let dataset = datasets
                    .iter()
                    .find(|d| d.path == path)
                    .unwrap_or_else(|| panic!("{case}: `{path}` missing"));
                let shape: Vec<usize> = v["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                assert_eq!(dataset.shape, shape, "{case}: `{path}` shape");
                let tensor = st.tensor(v["safetensors_name"].as_str().unwrap()).unwrap();
                assert_eq!(tensor.shape(), shape.as_slice(), "{case}: `{path}`");
                let expected: Vec<u32> = tensor
                    .data()
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                let found: Vec<u32> = dataset.data.iter().map(|x| x.to_bits()).collect();
                assert!(
                    expected == found,
                    "{case}: `{path}` differs from safetensors"
                );
            }
        }
    }

    /// Both file formats h5py writes (Keras uses the first), with every supported layout,
    /// float64, a scalar, an empty dataset and an empty group; attributes are skipped.
    #[test]
    fn reads_earliest_and_latest_formats() {
        for name in ["earliest.h5", "latest.h5"] {
            let datasets = read_datasets(&fixture(name)).unwrap();
            let paths: Vec<&str> = datasets.iter().map(|d| d.path.as_str()).collect();
            assert_eq!(
                paths,
                ["a/b/f64", "a/f32", "compact", "scalar", "zero"],
                "{name}"
            );
            let by_path = |p: &str| datasets.iter().find(|d| d.path == p).unwrap();
            let f64s = by_path("a/b/f64");
            assert_eq!(f64s.shape, [4]);
            assert_eq!(f64s.data, [0.1f64 as f32, -2.0, f32::INFINITY, 3.25]);
            let f32s = by_path("a/f32");
            assert_eq!(f32s.shape, [2, 3]);
            assert_eq!(f32s.data, [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]);
            assert_eq!(by_path("compact").data, [7.0, 8.0, 9.0]);
            let scalar = by_path("scalar");
            assert_eq!(
                (scalar.shape.as_slice(), scalar.data.as_slice()),
                (&[][..], &[2.5][..])
            );
            let zero = by_path("zero");
            assert_eq!((zero.shape.as_slice(), zero.data.len()), (&[0, 4][..], 0));
        }
    }

    /// Each refusal names what is unsupported and where.
    #[test]
    fn refusals_name_the_feature_and_the_dataset() {
        for (name, parts) in [
            ("chunked.h5", &["chunked layout", "`g/x`"][..]),
            ("int32.h5", &["integer (4 bytes)", "`g/x`"]),
            ("big_endian.h5", &["big-endian float (4 bytes)", "`x`"]),
            ("dense.h5", &["densely", "`g`"]),
            ("soft_link.h5", &["soft link", "`y`"]),
        ] {
            let text = message(read_datasets(&fixture(name)));
            assert!(text.starts_with("HDF5: "), "{name}: {text}");
            for part in parts {
                assert!(text.contains(part), "{name}: `{text}` lacks `{part}`");
            }
        }
        assert!(message(read_datasets(b"")).contains("not an HDF5 file"));
        assert!(message(read_datasets(&[0u8; 4096])).contains("not an HDF5 file"));
    }

    /// Symbol tables of several nodes, one with an inner B-tree level; a dataset reached by 300
    /// hard links is read once, under the first path in name order.
    #[test]
    fn reads_large_symbol_tables() {
        let datasets = read_datasets(&fixture("wide.h5")).unwrap();
        let mut expected = vec![("links/l000".to_string(), -1.0)];
        expected.extend((0..40).map(|i| (format!("w/d{i:02}"), i as f32)));
        let found: Vec<(String, f32)> = datasets.into_iter().map(|d| (d.path, d.data[0])).collect();
        assert_eq!(found, expected);
    }

    /// A hard link back to the root is a cycle; every object is read once.
    #[test]
    fn cyclic_links_end() {
        let datasets = read_datasets(&fixture("cycle.h5")).unwrap();
        let paths: Vec<&str> = datasets.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["x"]);
    }

    /// Sets the end-of-file address of a version 0 or 3 superblock (offsets and lengths of 8
    /// bytes, no user block), so a truncated file gets past the superblock's own check.
    fn with_eof(bytes: &[u8], eof: usize) -> Vec<u8> {
        let mut out = bytes.to_vec();
        let (field, checksum) = match bytes.get(8) {
            Some(0) => (40, None),
            Some(3) => (28, Some(44)),
            _ => return out,
        };
        if out.len() >= field + 8 {
            out[field..field + 8].copy_from_slice(&(eof as u64).to_le_bytes());
        }
        if let Some(at) = checksum.filter(|&at| out.len() >= at + 4) {
            let sum = lookup3(&out[..at]);
            out[at..at + 4].copy_from_slice(&sum.to_le_bytes());
        }
        out
    }

    /// What the reader returns never holds more f32s than the file has bytes for.
    fn check_bounded(bytes: &[u8], result: Result<Vec<H5Dataset>>) {
        if let Ok(datasets) = result {
            let values: usize = datasets.iter().map(|d| d.data.len()).sum();
            assert!(values * 4 <= bytes.len());
            for d in &datasets {
                assert_eq!(
                    d.shape.iter().product::<usize>(),
                    d.data.len(),
                    "{}",
                    d.path
                );
            }
        }
    }

    #[test]
    fn truncated_files_are_errors() {
        for name in ["earliest.h5", "latest.h5"] {
            let bytes = fixture(name);
            for len in 0..bytes.len() {
                let prefix = &bytes[..len];
                assert!(read_datasets(prefix).is_err(), "{name}[..{len}]");
                // With the superblock claiming the shorter length, the reader gets further.
                let patched = with_eof(prefix, len);
                check_bounded(&patched, read_datasets(&patched));
            }
        }
        let bytes = keras("k02_prenorm.weights.h5");
        for len in (0..bytes.len()).step_by(7) {
            assert!(read_datasets(&bytes[..len]).is_err(), "k02[..{len}]");
            let patched = with_eof(&bytes[..len], len);
            check_bounded(&patched, read_datasets(&patched));
        }
    }

    /// Every byte flipped in two ways, then a few random bytes at a time; checksums are also
    /// ignored, so that damage to version 2 structures reaches the parser.
    #[test]
    fn corrupted_bytes_never_panic() {
        // Only version 2 structures have checksums; without them both calls read alike.
        let check = |bad: &[u8]| {
            if bad.get(8) != Some(&0) {
                check_bounded(bad, read_datasets(bad));
            }
            check_bounded(bad, read(bad, false));
        };
        for name in ["earliest.h5", "latest.h5", "cycle.h5"] {
            let bytes = fixture(name);
            for at in 0..bytes.len() {
                for flip in [0xff, 0x01] {
                    let mut bad = bytes.clone();
                    bad[at] ^= flip;
                    check(&bad);
                }
            }
        }
        let mut rng = Rng::seed_from_u64(9);
        let files = [
            keras("k02_prenorm.weights.h5"),
            fixture("latest.h5"),
            fixture("wide.h5"),
        ];
        for bytes in files {
            for _ in 0..1000 {
                let mut bad = bytes.clone();
                for _ in 0..1 + rng.next_u64() % 8 {
                    let at = (rng.next_u64() % bad.len() as u64) as usize;
                    bad[at] = rng.next_u64() as u8;
                }
                check(&bad);
            }
        }
    }

    /// A dataspace claiming far more elements than the file holds is an error before any
    /// allocation, whether the byte count fits in u64 or not.
    #[test]
    fn huge_declared_sizes_are_errors() {
        let bytes = fixture("earliest.h5");
        // `a/f32`'s dataspace message: version 1, rank 2, max dims present, then [2, 3].
        let mut pattern = vec![1u8, 2, 1, 0, 0, 0, 0, 0];
        pattern.extend(2u64.to_le_bytes());
        pattern.extend(3u64.to_le_bytes());
        let at = bytes
            .windows(pattern.len())
            .position(|w| w == pattern)
            .unwrap()
            + 8;
        // Its layout message: version 3, contiguous, the address, then the size (24 bytes).
        let layout = bytes
            .windows(18)
            .position(|w| w[..2] == [3, 1] && w[10..] == 24u64.to_le_bytes())
            .unwrap()
            + 10;
        for (dims, storage, expected) in [
            ([1_000_000_000_000u64, 3], 24, "storage is 24 bytes"),
            (
                [1_000_000_000_000, 3],
                12_000_000_000_000,
                "pass the end of the 11512-byte file",
            ),
            ([1 << 40, 1 << 40], 24, "overflows"),
            ([1 << 62, 1], 24, "overflows"),
        ] {
            let mut bad = bytes.clone();
            bad[at..at + 8].copy_from_slice(&dims[0].to_le_bytes());
            bad[at + 8..at + 16].copy_from_slice(&dims[1].to_le_bytes());
            bad[layout..layout + 8].copy_from_slice(&u64::to_le_bytes(storage));
            let text = message(read_datasets(&bad));
            assert!(
                text.contains(expected) && text.contains("`a/f32`"),
                "{text}"
            );
        }
    }

    /// lookup3's published test vectors (hashlittle with initval 0).
    #[test]
    fn lookup3_matches_reference_values() {
        assert_eq!(lookup3(b""), 0xdead_beef);
        assert_eq!(lookup3(b"Four score and seven years ago"), 0x1777_0551);
    }
}
