//! The original module's constructor arguments, as JSON (`compattn forward --config C.json`):
//! `{"format": "fairseq", "embed_dim": 32, "num_heads": 4, ...}`, under the original names, as
//! the golden-variants cases record them in `constructor`. A reader takes the arguments it
//! knows; one it does not know is an error naming it, so a typo is never silently ignored.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::checkpoint::Format;
use crate::error::{Error, Result};

/// Parsed constructor arguments.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Constructor {
    args: Map<String, Value>,
    format: Option<Format>,
    /// Arguments read so far (for [`Constructor::check_all_read`]).
    read: RefCell<BTreeSet<String>>,
}

impl Constructor {
    /// Parses a JSON object. `"format"`, if present, must name a [`Format`].
    pub fn parse(json: &str) -> Result<Constructor> {
        let value: Value = serde_json::from_str(json).map_err(|e| Error::InvalidConfig {
            field: "configuration",
            value: e.to_string(),
            reason: "must be a JSON object of constructor arguments",
        })?;
        let Value::Object(mut args) = value else {
            return Err(Error::InvalidConfig {
                field: "configuration",
                value: short(&value),
                reason: "must be a JSON object of constructor arguments",
            });
        };
        let format = match args.remove("format") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => Some(Format::parse(&name)?),
            Some(other) => {
                return Err(Error::InvalidConfig {
                    field: "format",
                    value: short(&other),
                    reason: "must be one of lucidrains, keras, fairseq, xformers",
                });
            }
        };
        Ok(Constructor {
            args,
            format,
            read: RefCell::default(),
        })
    }

    /// The `"format"` it names, if any.
    pub fn format(&self) -> Option<Format> {
        self.format
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.read.borrow_mut().insert(key.to_string());
        self.args.get(key).filter(|v| !v.is_null())
    }

    /// A non-negative integer argument (`null` or absent: `None`).
    pub fn usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| invalid(key, v, "must be a non-negative integer")),
        }
    }

    /// Fails with [`Error::ConfigMismatch`] if `key` is given and disagrees with `inferred`,
    /// the value the weights' shapes give.
    pub(crate) fn expect_usize(&self, key: &str, inferred: usize) -> Result<()> {
        match self.usize(key)? {
            Some(value) if value != inferred => Err(Error::ConfigMismatch(format!(
                "the constructor says {key} = {value}, the weights' shapes {inferred}"
            ))),
            _ => Ok(()),
        }
    }

    /// Whether the layer is causal: the constructor's `causal` (always read, so that
    /// [`Constructor::check_all_read`] accepts it) combined with `option`
    /// ([`CheckpointOptions::causal`](super::CheckpointOptions::causal)). Either one set makes the
    /// layer causal; the option set while the constructor says `false` is
    /// [`Error::ConfigMismatch`], naming both.
    pub(crate) fn causal(&self, option: bool) -> Result<bool> {
        match self.bool("causal")? {
            Some(false) if option => Err(Error::ConfigMismatch(
                "the options ask for causal attention (CheckpointOptions::causal; `compattn \
                 forward --causal`), the constructor says \"causal\": false: drop one of them"
                    .into(),
            )),
            from_constructor => Ok(option || from_constructor.unwrap_or(false)),
        }
    }

    /// A boolean argument (`null` or absent: `None`).
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| invalid(key, v, "must be true or false")),
        }
    }

    /// A number argument (`null` or absent: `None`).
    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| invalid(key, v, "must be a number")),
        }
    }

    /// A string argument (`null` or absent: `None`).
    pub fn string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| invalid(key, v, "must be a string")),
        }
    }

    /// Fails with [`Error::Unsupported`] naming the first argument no reader asked for.
    pub fn check_all_read(&self, format: Format) -> Result<()> {
        let read = self.read.borrow();
        match self.args.keys().find(|k| !read.contains(*k)) {
            Some(key) => Err(Error::Unsupported {
                format: format.name(),
                option: key.clone(),
                reason: "not a constructor argument of this implementation (check the \
                         spelling against the original module's signature)",
            }),
            None => Ok(()),
        }
    }
}

/// The value's JSON text, cut at 80 characters (not bytes: the text may be any UTF-8).
fn short(value: &Value) -> String {
    value.to_string().chars().take(80).collect()
}

fn invalid(key: &str, value: &Value, reason: &'static str) -> Error {
    Error::InvalidConfig {
        field: "constructor argument",
        value: format!("{key} = {}", short(value)),
        reason,
    }
}
