//! Where tuned tilings are kept (issue 18, target 4; ARCHITECTURE decision 20): per context, in
//! memory for its life, and natively on disk, keyed by adapter, driver, the device's read of
//! texel operands (`TexelRead`: a tiling measured with one read is not the other's) and shape
//! class.
//!
//! This module only stores strings. What a shape class is, which tilings are candidates and
//! what a stored choice means belong to the plan (`plan::tuned`); the measuring to the layer
//! (`layer::tune`). Keeping the store meaning-free keeps the dependency one way: plan → gpu.
//!
//! The file is one JSON object, `{"format": 1, "crate": "<version>", "adapters": {"<adapter>":
//! {"<shape class>": "<choice>"}}}`. A file of another format or crate version is ignored (its
//! kernels may have changed) and replaced on the next save; a file that does not parse is
//! ignored with a warning. Writes go through a temporary file and a rename, so a reader never
//! sees half a file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Whether plans use tilings measured on this adapter (`COMPATTN_TUNE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TuneMode {
    /// The built-in tilings; nothing is measured, read or written. Tests run this way, so their
    /// results are deterministic.
    Off,
    /// On first use of a shape class (with no stored choice), time the candidate tilings, keep
    /// the fastest in memory and (natively) in the cache file; later uses, in this process or
    /// the next, read it.
    #[default]
    On,
    /// As `On`, but the cache file is not read: every shape class is measured again once per
    /// context, and the file's entries are replaced.
    Force,
}

impl TuneMode {
    /// `COMPATTN_TUNE=off|on|force` (unset: `on`).
    pub fn from_env() -> Result<Self> {
        match std::env::var("COMPATTN_TUNE").as_deref() {
            Err(_) | Ok("") | Ok("on") => Ok(TuneMode::On),
            Ok("off") => Ok(TuneMode::Off),
            Ok("force") => Ok(TuneMode::Force),
            Ok(other) => Err(Error::InvalidConfig {
                field: "COMPATTN_TUNE",
                value: other.to_string(),
                reason: "must be `off`, `on` or `force`",
            }),
        }
    }

    /// The lowercase name (`off`, `on`, `force`).
    pub fn name(&self) -> &'static str {
        match self {
            TuneMode::Off => "off",
            TuneMode::On => "on",
            TuneMode::Force => "force",
        }
    }
}

/// The cache file's path: `COMPATTN_TUNE_CACHE` if set; else `compattn/tuning.json` under
/// `XDG_CACHE_HOME`, `~/.cache` (`HOME`) or `LOCALAPPDATA`, the first that is set; `None` in a
/// browser (memory only) or where none is set.
pub fn default_cache_path() -> Option<PathBuf> {
    if cfg!(target_arch = "wasm32") {
        return None;
    }
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(path) = var("COMPATTN_TUNE_CACHE") {
        return Some(PathBuf::from(path));
    }
    let base = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .or_else(|| var("LOCALAPPDATA").map(PathBuf::from))?;
    Some(base.join("compattn").join("tuning.json"))
}

/// The version of the cache file's layout.
#[cfg(not(target_arch = "wasm32"))]
const FORMAT: u64 = 1;

/// The tuned choices of one context: shape class → choice, both opaque strings.
pub(crate) struct TuningStore {
    mode: Mutex<TuneMode>,
    path: Mutex<Option<PathBuf>>,
    /// Which adapter the entries are for, in the file: name, backend, driver and its version,
    /// and how its kernels read texel operands.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    adapter: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<String, String>,
    /// Whether the file's entries were merged in (once, on first lookup in `On` mode).
    loaded: bool,
}

impl TuningStore {
    /// `texel_reads`: how the device's texel kernels read their operands, in words (`sampled`,
    /// `storage`), part of the key.
    pub(crate) fn new(
        info: &wgpu::AdapterInfo,
        texel_reads: &str,
        mode: TuneMode,
        path: Option<PathBuf>,
    ) -> Self {
        TuningStore {
            mode: Mutex::new(mode),
            path: Mutex::new(path),
            adapter: format!(
                "{} | {:?} | {} | {} | texel reads {texel_reads}",
                info.name, info.backend, info.driver, info.driver_info
            ),
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn mode(&self) -> TuneMode {
        self.mode.lock().map(|m| *m).unwrap_or(TuneMode::Off)
    }

    pub(crate) fn set_mode(&self, mode: TuneMode) {
        if let Ok(mut m) = self.mode.lock() {
            *m = mode;
        }
    }

    pub(crate) fn path(&self) -> Option<PathBuf> {
        self.path.lock().ok().and_then(|p| p.clone())
    }

    /// Sets the cache file (`None`: memory only); its entries are read again on next lookup.
    /// In a browser there is no file system: always memory only.
    pub(crate) fn set_path(&self, path: Option<PathBuf>) {
        let path = path.filter(|_| !cfg!(target_arch = "wasm32"));
        if let Ok(mut p) = self.path.lock() {
            *p = path;
        }
        if let Ok(mut state) = self.state.lock() {
            state.loaded = false;
        }
    }

    /// The stored choice for `class`: set in this context, or (in `On` mode) read from the file.
    /// In `Off` mode nothing is stored or read.
    pub(crate) fn get(&self, class: &str) -> Option<String> {
        let mode = self.mode();
        if mode == TuneMode::Off {
            return None;
        }
        let mut state = self.state.lock().ok()?;
        if !state.loaded && mode == TuneMode::On {
            state.loaded = true;
            #[cfg(not(target_arch = "wasm32"))]
            if let Some(path) = self.path() {
                for (k, v) in self.read_file(&path) {
                    state.entries.entry(k).or_insert(v);
                }
            }
        }
        state.entries.get(class).cloned()
    }

    /// Stores `choice` for `class` in memory and, where there is a cache file, on disk. A file
    /// that cannot be written costs only the next process's measuring: it is logged, not
    /// returned.
    pub(crate) fn set(&self, class: &str, choice: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.entries.insert(class.to_string(), choice.to_string());
        }
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(path) = self.path()
            && let Err(error) = self.write_file(&path, class, choice)
        {
            log::warn!(
                "could not write the tuning cache {}: {error}",
                path.display()
            );
        }
    }

    /// Stores `choice` for `class` in memory only (tests pinning a tiling).
    #[cfg(test)]
    pub(crate) fn set_in_memory(&self, class: &str, choice: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.entries.insert(class.to_string(), choice.to_string());
        }
    }

    /// The entries of this context (for reports and tests).
    pub(crate) fn entries(&self) -> BTreeMap<String, String> {
        self.state
            .lock()
            .map(|s| s.entries.clone())
            .unwrap_or_default()
    }

    /// The whole file as JSON, or `None` where it is missing, unreadable or of another format or
    /// crate version.
    #[cfg(not(target_arch = "wasm32"))]
    fn read_json(path: &std::path::Path) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(path).ok()?;
        let json: serde_json::Value = match serde_json::from_str(&text) {
            Ok(json) => json,
            Err(error) => {
                log::warn!("ignoring the tuning cache {}: {error}", path.display());
                return None;
            }
        };
        let current = json.get("format").and_then(|f| f.as_u64()) == Some(FORMAT)
            && json.get("crate").and_then(|c| c.as_str()) == Some(env!("CARGO_PKG_VERSION"));
        current.then_some(json)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn read_file(&self, path: &std::path::Path) -> Vec<(String, String)> {
        let Some(json) = Self::read_json(path) else {
            return Vec::new();
        };
        json.get("adapters")
            .and_then(|a| a.get(&self.adapter))
            .and_then(|a| a.as_object())
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn write_file(&self, path: &std::path::Path, class: &str, choice: &str) -> std::io::Result<()> {
        // One writer at a time in this process (contexts share the file); each write goes to a
        // temporary file of its own and is renamed into place. Between processes the last
        // rename wins, which costs at most the other's measuring in a later run.
        static WRITING: Mutex<()> = Mutex::new(());
        static TEMPORARIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let _writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
        let mut json = Self::read_json(path).unwrap_or_else(|| {
            serde_json::json!({
                "format": FORMAT,
                "crate": env!("CARGO_PKG_VERSION"),
                "adapters": {},
            })
        });
        let adapters = json
            .get_mut("adapters")
            .and_then(|a| a.as_object_mut())
            .ok_or_else(|| std::io::Error::other("`adapters` is not an object"))?;
        let entries = adapters
            .entry(self.adapter.clone())
            .or_insert_with(|| serde_json::json!({}));
        if let Some(entries) = entries.as_object_mut() {
            entries.insert(class.to_string(), serde_json::Value::from(choice));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_string_pretty(&json).map_err(std::io::Error::other)?;
        let temporary = path.with_extension(format!(
            "json.{}.{}.tmp",
            std::process::id(),
            TEMPORARIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let written =
            std::fs::write(&temporary, text).and_then(|_| std::fs::rename(&temporary, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written
    }
}
