//! Attention maps: what the layer attends to, for people to look at.
//!
//! [`AttentionMaps`] holds, for chosen query rows, the two distributions the paper analyses:
//! * the **search attention** `A[b, σ, i, j]`: how strongly search `σ` of query token `i`
//!   attends key `j` (SPEC §2.3's softmax over keys, after the key mask and causal masking);
//! * the **retrieval selection** `C[b, σ, i, ρ]`: how search `σ` of token `i` weighs retrieval
//!   `ρ` (the softmax over the `r` retrieved vectors).
//!
//! The layer produces them with [`CompositionalAttention::forward_with_maps`]; this module is
//! the data, its size rule ([`MapsOptions`]) and its safetensors form, which `compattn forward
//! --maps` writes and `compattn plot` reads. It needs no GPU.
//!
//! [`CompositionalAttention::forward_with_maps`]: crate::CompositionalAttention::forward_with_maps

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Tensor name of the search attention `[batch, searches, queries, seq]` in a maps file.
pub const SEARCH_ATTENTION: &str = "search_attention";
/// Tensor name of the retrieval selection `[batch, searches, queries, retrievals]`.
pub const RETRIEVAL_SELECTION: &str = "retrieval_selection";
/// Tensor name of the query rows (token positions, `I64 [queries]`) the maps are of.
pub const QUERY_ROWS: &str = "query_rows";

/// Which query rows to return, and how large the maps may be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapsOptions {
    /// Query token positions, strictly increasing and below `seq`; `None`: every position.
    /// The same positions are taken in every batch row.
    pub query_rows: Option<Vec<usize>>,
    /// The most bytes the returned maps may hold (both tensors, as f32). Larger requests are
    /// refused with [`Error::MapsTooLarge`] before anything runs.
    pub max_bytes: u64,
}

impl MapsOptions {
    /// The stated size limit of [`MapsOptions::default`]: 256 MiB of maps, 64 Mi values (every
    /// row of one 2048-token sequence with 8 searches takes 32 Mi of them).
    pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

    /// Maps of only these query positions (of every batch row), with the default size limit.
    pub fn rows(query_rows: impl Into<Vec<usize>>) -> Self {
        MapsOptions {
            query_rows: Some(query_rows.into()),
            ..MapsOptions::default()
        }
    }

    /// The same options with another size limit in bytes.
    pub fn max_bytes(self, max_bytes: u64) -> Self {
        MapsOptions { max_bytes, ..self }
    }

    /// The query positions these options ask of a `[batch, seq]` problem of a layer with
    /// `searches` searches and `retrievals` retrievals: checked against `seq` and the size limit.
    pub fn resolve(
        &self,
        batch: usize,
        seq: usize,
        searches: usize,
        retrievals: usize,
    ) -> Result<Vec<usize>> {
        let rows = match &self.query_rows {
            None => (0..seq).collect(),
            Some(rows) => {
                if rows.is_empty() {
                    return Err(Error::InvalidConfig {
                        field: "query_rows",
                        value: "[]".into(),
                        reason: "ask for at least one query row (None: every row)",
                    });
                }
                if let Some(&row) = rows.iter().find(|&&row| row >= seq) {
                    return Err(Error::InvalidConfig {
                        field: "query_rows",
                        value: format!("{row}: row {row} is past the sequence (n = {seq})"),
                        reason: "a query row is a token position, below n",
                    });
                }
                check_increasing(rows)?;
                rows.clone()
            }
        };
        let bytes = AttentionMaps::bytes_for(batch, searches, rows.len(), seq, retrievals);
        if bytes > self.max_bytes {
            return Err(Error::MapsTooLarge {
                queries: rows.len(),
                bytes,
                limit: self.max_bytes,
            });
        }
        Ok(rows)
    }
}

impl Default for MapsOptions {
    fn default() -> Self {
        MapsOptions {
            query_rows: None,
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }
}

/// The search attention and the retrieval selection of chosen query rows (module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionMaps {
    /// Batch rows.
    pub batch: usize,
    /// Searches `s`.
    pub searches: usize,
    /// Retrievals `r`.
    pub retrievals: usize,
    /// Keys per query: the sequence length `n`.
    pub seq: usize,
    /// The query token positions the maps are of, strictly increasing.
    pub query_rows: Vec<usize>,
    /// `[batch, searches, query_rows.len(), seq]`: each row sums to 1 over the keys. A row
    /// whose every key is masked is uniform over all keys (SPEC §6).
    pub search: Vec<f32>,
    /// `[batch, searches, query_rows.len(), retrievals]`: each row sums to 1.
    pub selection: Vec<f32>,
}

impl AttentionMaps {
    /// Bytes of the maps of `queries` rows (both tensors, f32), saturating at `u64::MAX` (so
    /// that no size wraps below a limit it is checked against).
    pub fn bytes_for(
        batch: usize,
        searches: usize,
        queries: usize,
        seq: usize,
        retrievals: usize,
    ) -> u64 {
        let width = (seq as u64).saturating_add(retrievals as u64);
        [batch, searches, queries]
            .iter()
            .fold(4u64.saturating_mul(width), |acc, &n| {
                acc.saturating_mul(n as u64)
            })
    }

    /// The number of query rows.
    pub fn queries(&self) -> usize {
        self.query_rows.len()
    }

    /// Bytes the maps hold.
    pub fn bytes(&self) -> u64 {
        Self::bytes_for(
            self.batch,
            self.searches,
            self.queries(),
            self.seq,
            self.retrievals,
        )
    }

    /// Search `sigma`'s attention over the keys for the `q`-th query row of batch row `b`.
    pub fn search_row(&self, b: usize, sigma: usize, q: usize) -> &[f32] {
        let index = (b * self.searches + sigma) * self.queries() + q;
        &self.search[index * self.seq..][..self.seq]
    }

    /// Search `sigma`'s selection over the retrievals for the `q`-th query row of batch row `b`.
    pub fn selection_row(&self, b: usize, sigma: usize, q: usize) -> &[f32] {
        let index = (b * self.searches + sigma) * self.queries() + q;
        &self.selection[index * self.retrievals..][..self.retrievals]
    }

    /// The maps as a safetensors file: [`SEARCH_ATTENTION`], [`RETRIEVAL_SELECTION`] (F32) and
    /// [`QUERY_ROWS`] (I64), loadable by `safetensors.torch.load_file`.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let q = self.queries();
        let rows: Vec<u8> = self
            .query_rows
            .iter()
            .flat_map(|&row| (row as i64).to_le_bytes())
            .collect();
        let f32_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let (search, selection) = (f32_bytes(&self.search), f32_bytes(&self.selection));
        let view = |dtype, shape: Vec<usize>, data| TensorView::new(dtype, shape, data);
        let tensors = [
            (
                SEARCH_ATTENTION,
                view(
                    Dtype::F32,
                    vec![self.batch, self.searches, q, self.seq],
                    &search,
                )?,
            ),
            (
                RETRIEVAL_SELECTION,
                view(
                    Dtype::F32,
                    vec![self.batch, self.searches, q, self.retrievals],
                    &selection,
                )?,
            ),
            (QUERY_ROWS, view(Dtype::I64, vec![q], &rows)?),
        ];
        Ok(safetensors::serialize(tensors, None)?)
    }

    /// Reads a maps file ([`AttentionMaps::to_safetensors`]), checking that the three tensors
    /// agree in shape and that the query rows are increasing positions below `seq`.
    pub fn from_safetensors(bytes: &[u8]) -> Result<AttentionMaps> {
        let file = SafeTensors::deserialize(bytes)?;
        let search_view = file
            .tensor(SEARCH_ATTENTION)
            .map_err(|_| missing(SEARCH_ATTENTION))?;
        let selection_view = file
            .tensor(RETRIEVAL_SELECTION)
            .map_err(|_| missing(RETRIEVAL_SELECTION))?;
        let rows_view = file.tensor(QUERY_ROWS).map_err(|_| missing(QUERY_ROWS))?;
        let [batch, searches, q, seq] = four(SEARCH_ATTENTION, search_view.shape())?;
        let [b2, s2, q2, retrievals] = four(RETRIEVAL_SELECTION, selection_view.shape())?;
        if [batch, searches, q, seq, retrievals].contains(&0) {
            return Err(Error::InvalidConfig {
                field: "attention maps",
                value: format!("[{batch}, {searches}, {q}, {seq}] and [.., {retrievals}]"),
                reason: "every dimension of the maps must be at least 1",
            });
        }
        if (b2, s2, q2) != (batch, searches, q) {
            return Err(Error::shape(
                RETRIEVAL_SELECTION,
                &[batch, searches, q, retrievals],
                selection_view.shape(),
            ));
        }
        if rows_view.dtype() != Dtype::I64 {
            return Err(Error::Dtype {
                name: QUERY_ROWS.into(),
                expected: "I64",
                found: format!("{:?}", rows_view.dtype()),
            });
        }
        if rows_view.shape() != [q] {
            return Err(Error::shape(QUERY_ROWS, &[q], rows_view.shape()));
        }
        let query_rows = rows_view
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("chunk of 8")))
            .map(|row| {
                usize::try_from(row)
                    .ok()
                    .filter(|&row| row < seq)
                    .ok_or_else(|| Error::shape(QUERY_ROWS, &[seq], &[row.max(0) as usize]))
            })
            .collect::<Result<Vec<usize>>>()?;
        check_increasing(&query_rows)?;
        Ok(AttentionMaps {
            batch,
            searches,
            retrievals,
            seq,
            query_rows,
            search: crate::io::tensor_to_f32(SEARCH_ATTENTION, &search_view)?,
            selection: crate::io::tensor_to_f32(RETRIEVAL_SELECTION, &selection_view)?,
        })
    }
}

/// Query rows must be strictly increasing (each at most once, in order).
fn check_increasing(rows: &[usize]) -> Result<()> {
    if rows.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::InvalidConfig {
            field: "query_rows",
            value: format!("{rows:?}"),
            reason: "query rows must be strictly increasing",
        });
    }
    Ok(())
}

fn missing(name: &str) -> Error {
    Error::MissingTensor {
        name: name.into(),
        context: Some("an attention maps file (compattn forward --maps)".into()),
    }
}

/// The four dimensions of a maps tensor, or an error naming it.
fn four(name: &str, shape: &[usize]) -> Result<[usize; 4]> {
    shape.try_into().map_err(|_| {
        Error::ConfigMismatch(format!(
            "{name} must have 4 dimensions [batch, searches, query rows, keys or retrievals], \
             found {shape:?}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AttentionMaps {
        let (batch, searches, seq, retrievals) = (2, 3, 5, 2);
        let query_rows = vec![0, 3, 4];
        let q = query_rows.len();
        AttentionMaps {
            batch,
            searches,
            retrievals,
            seq,
            search: (0..batch * searches * q * seq)
                .map(|i| i as f32 * 0.25)
                .collect(),
            selection: (0..batch * searches * q * retrievals)
                .map(|i| -(i as f32))
                .collect(),
            query_rows,
        }
    }

    #[test]
    fn safetensors_round_trip() {
        let maps = sample();
        let bytes = maps.to_safetensors().unwrap();
        assert_eq!(AttentionMaps::from_safetensors(&bytes).unwrap(), maps);
        assert_eq!(maps.search_row(1, 2, 1)[0], maps.search[(5 * 3 + 1) * 5]);
        assert_eq!(maps.selection_row(0, 1, 2), &maps.selection[10..12]);
    }

    #[test]
    fn options_check_rows_and_size() {
        let all = MapsOptions::default().resolve(2, 7, 3, 2).unwrap();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
        assert_eq!(
            MapsOptions::rows([1, 6]).resolve(2, 7, 3, 2).unwrap(),
            [1, 6]
        );
        for bad in [vec![], vec![7], vec![3, 3], vec![4, 2]] {
            let error = MapsOptions::rows(bad.clone())
                .resolve(2, 7, 3, 2)
                .unwrap_err();
            assert!(error.to_string().contains("query_rows"), "{bad:?}: {error}");
        }
        // 2·3·7·(7 + 2)·4 = 1512 bytes.
        assert!(
            MapsOptions::default()
                .max_bytes(1512)
                .resolve(2, 7, 3, 2)
                .is_ok()
        );
        let error = MapsOptions::default()
            .max_bytes(1511)
            .resolve(2, 7, 3, 2)
            .unwrap_err();
        assert!(matches!(
            error,
            Error::MapsTooLarge {
                queries: 7,
                bytes: 1512,
                limit: 1511
            }
        ));
        assert!(error.to_string().contains("MapsOptions::rows"), "{error}");
    }

    #[test]
    fn malformed_files_are_refused() {
        let maps = sample();
        let mut short = maps.clone();
        short.query_rows = vec![0, 3, 9];
        let bytes = short.to_safetensors().unwrap();
        assert!(AttentionMaps::from_safetensors(&bytes).is_err());
        let mut unordered = maps.clone();
        unordered.query_rows = vec![3, 0, 4];
        let bytes = unordered.to_safetensors().unwrap();
        assert!(AttentionMaps::from_safetensors(&bytes).is_err());
        let input = crate::io::output_to_safetensors(1, 2, 3, &[0.5; 6]).unwrap();
        let error = AttentionMaps::from_safetensors(&input).unwrap_err();
        assert!(error.to_string().contains(SEARCH_ATTENTION), "{error}");
    }
}
