//! The calibration state file: one node-local JSON document, written atomically (temporary file,
//! fsync, rename), read once at startup.
//!
//! Why a node-local file and not the Node object: the agent needs no Kubernetes API permission
//! at all (its ServiceAccount has none), the file survives agent restarts and upgrades, it is
//! naturally per node, and it is lost when the node is reimaged, which is right: the hardware
//! behind the meter may have changed.
//!
//! A file that cannot be used (unreadable, not this format, learnt for another node, model or
//! scale, or holding values no fit can have) is never fatal and never silently overwritten: it is
//! renamed to `<name>.rejected`, a warning names the file and the problem, and the fit starts
//! fresh.
//!
//! What is kept is the estimator's load levels (count and means per bin); the gain and offset are
//! recomputed from them, to the bit, at restore. `calibration.memory_samples` is not part of the
//! identity: when it was lowered since the file was written, the counts are clamped to it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::model::calibration::{Bin, Estimator, BINS};

/// `format` of the files this agent writes and reads (v1, written by agents before the per-level
/// estimator, held a recursive least-squares state and is set aside).
pub const FORMAT: &str = "wattwise.calibration/v2";

/// What a fit was learnt for: a fit only applies to the same node, model and scale S.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub node_name: String,
    pub model_name: String,
    pub model_version: String,
    pub scale_watts: f64,
}

impl Identity {
    /// `model` as loaded on `node_name`.
    pub fn of(node_name: &str, model: &crate::model::PowerModel) -> Self {
        Self {
            node_name: node_name.to_string(),
            model_name: model.info().name.clone(),
            model_version: model.info().version.clone(),
            scale_watts: model.scale_watts(),
        }
    }

    /// Why `file` does not belong to this identity, if it does not. S is compared to a relative
    /// 1e-9: it is recomputed from the same model and config at every start.
    fn mismatch(&self, file: &StateFile) -> Option<String> {
        let same_scale = (file.scale_watts - self.scale_watts).abs()
            <= 1e-9 * self.scale_watts.abs().max(file.scale_watts.abs());
        if file.node_name == self.node_name
            && file.model_name == self.model_name
            && file.model_version == self.model_version
            && same_scale
        {
            return None;
        }
        Some(format!(
            "it was learnt for node {:?}, model {} version {}, scale {} W; this agent runs node {:?}, model {} version {}, scale {} W",
            file.node_name,
            file.model_name,
            file.model_version,
            file.scale_watts,
            self.node_name,
            self.model_name,
            self.model_version,
            self.scale_watts
        ))
    }
}

/// The file's contents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    pub format: String,
    pub node_name: String,
    pub model_name: String,
    pub model_version: String,
    /// S, watts.
    pub scale_watts: f64,
    /// Samples the fit has taken in its life (at least the bins' counts added up).
    pub samples: u64,
    /// The estimator's load levels 0, 5, …, 100 %, lowest first.
    pub bins: Vec<StoredBin>,
    /// When the file was written (seconds since 1970), for people reading it.
    pub saved_at_unix_seconds: u64,
}

/// One load level: [`Bin`] as written.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredBin {
    /// Samples averaged (at most `calibration.memory_samples`).
    pub n: u64,
    /// Mean model watts / S.
    pub model: f64,
    /// Mean measured watts / S.
    pub measured: f64,
}

impl From<&Bin> for StoredBin {
    fn from(bin: &Bin) -> Self {
        Self {
            n: bin.samples,
            model: bin.model,
            measured: bin.measured,
        }
    }
}

impl StateFile {
    /// The estimator the file holds, every value checked, for bins averaging over
    /// `memory_samples` (larger counts are clamped to it).
    pub fn estimator(&self, memory_samples: u64) -> Result<Estimator, String> {
        let bins: [Bin; BINS] = self
            .bins
            .iter()
            .map(|b| Bin {
                samples: b.n,
                model: b.model,
                measured: b.measured,
            })
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|v: Vec<Bin>| format!("bins has {} entries, not {BINS}", v.len()))?;
        let counted = self
            .bins
            .iter()
            .try_fold(0u64, |sum, b| sum.checked_add(b.n));
        if counted.is_none_or(|n| n > self.samples) {
            return Err(format!(
                "the bins hold {counted:?} samples, more than samples ({})",
                self.samples
            ));
        }
        Estimator::restore(self.scale_watts, memory_samples, bins).map_err(|e| e.to_string())
    }
}

/// The outcome of reading the state file at startup.
#[derive(Debug)]
pub enum Loaded {
    /// No file: a first start on this node.
    Absent,
    /// A file for this identity (its values are checked by the caller).
    Found(StateFile),
    /// A file that cannot be used, and why.
    Unusable(String),
}

/// Reads `path` for `identity`.
pub fn load(path: &Path, identity: &Identity) -> Loaded {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Absent,
        Err(e) => return Loaded::Unusable(format!("cannot read it: {e}")),
    };
    // The format first, so a file of another version says so rather than which field it lacks.
    #[derive(Deserialize)]
    struct Format {
        format: String,
    }
    match serde_json::from_str::<Format>(&text) {
        Ok(Format { format }) if format != FORMAT => {
            return Loaded::Unusable(format!(
                "format {format:?} is not {FORMAT:?} (written by another agent version)"
            ))
        }
        _ => {}
    }
    let file: StateFile = match serde_json::from_str(&text) {
        Ok(file) => file,
        Err(e) => {
            return Loaded::Unusable(format!("not a wattwise calibration state ({FORMAT}): {e}"))
        }
    };
    match identity.mismatch(&file) {
        Some(why) => Loaded::Unusable(why),
        None => Loaded::Found(file),
    }
}

/// `<path>.rejected`: where an unusable file is kept for inspection.
pub fn rejected_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".rejected");
    path.with_file_name(name)
}

/// Writes `file` to `path` atomically: a reader (or a crash) sees the old file or the new one,
/// never a torn one. Creates the directory if needed.
pub fn save(path: &Path, file: &StateFile) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced (best effort: some
        // filesystems refuse to sync a directory).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Seconds since 1970, for `saved_at_unix_seconds`.
pub fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            node_name: "node-1".into(),
            model_name: "generic".into(),
            model_version: "3".into(),
            scale_watts: 312.5,
        }
    }

    fn file() -> StateFile {
        StateFile {
            format: FORMAT.into(),
            node_name: "node-1".into(),
            model_name: "generic".into(),
            model_version: "3".into(),
            scale_watts: 312.5,
            samples: 3,
            bins: {
                let empty = StoredBin {
                    n: 0,
                    model: 0.0,
                    measured: 0.0,
                };
                let mut v = vec![empty; BINS];
                v[8] = StoredBin {
                    n: 3,
                    model: 0.61,
                    measured: 0.7,
                };
                v
            },
            saved_at_unix_seconds: 1_700_000_000,
        }
    }

    #[test]
    fn a_saved_file_loads_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/calibration.json");
        save(&path, &file()).unwrap();
        match load(&path, &identity()) {
            Loaded::Found(back) => assert_eq!(back, file()),
            other => panic!("{other:?}"),
        }
        assert!(
            !dir.path().join("sub/calibration.json.tmp").exists(),
            "no temporary file left"
        );
        // Saving again replaces the file.
        let mut changed = file();
        changed.samples = 4;
        changed.bins[9].n = 1;
        save(&path, &changed).unwrap();
        assert!(matches!(load(&path, &identity()), Loaded::Found(f) if f.samples == 4));
    }

    #[test]
    fn a_missing_file_is_absent_and_bad_files_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calibration.json");
        assert!(matches!(load(&path, &identity()), Loaded::Absent));

        let unusable = |text: &str| {
            std::fs::write(&path, text).unwrap();
            match load(&path, &identity()) {
                Loaded::Unusable(why) => why,
                other => panic!("{text}: {other:?}"),
            }
        };
        assert!(unusable("{not json").contains("not a wattwise calibration state"));
        assert!(unusable("").contains("not a wattwise calibration state"));
        let mut json = serde_json::to_value(file()).unwrap();
        json["extra"] = 1.into();
        assert!(unusable(&json.to_string()).contains("extra"));
        let mut json = serde_json::to_value(file()).unwrap();
        json["format"] = "wattwise.calibration/v0".into();
        assert!(unusable(&json.to_string()).contains("v0"));
        // A file of the previous agent version is named as one, not as a missing field.
        let v1 =
            r#"{"format": "wattwise.calibration/v1", "node_name": "node-1", "theta": [1.0, 0.0]}"#;
        let why = unusable(v1);
        assert!(
            why.contains("v1") && why.contains("another agent version"),
            "{why}"
        );
        for (field, value) in [
            ("node_name", serde_json::json!("node-2")),
            ("model_name", serde_json::json!("other")),
            ("model_version", serde_json::json!("4")),
            ("scale_watts", serde_json::json!(300.0)),
        ] {
            let mut json = serde_json::to_value(file()).unwrap();
            json[field] = value;
            let why = unusable(&json.to_string());
            assert!(
                why.contains("learnt for") && why.contains("node-1"),
                "{field}: {why}"
            );
        }
    }

    #[test]
    fn the_estimator_is_checked_and_counts_clamped_to_the_memory() {
        let e = file().estimator(300).unwrap();
        assert_eq!(e.bins()[8].samples, 3);
        assert_eq!(e.bins()[8].measured, 0.7);
        assert_eq!(file().estimator(10).unwrap().bins()[8].samples, 3);
        let mut big = file();
        big.bins[8].n = 500;
        big.samples = 600;
        assert_eq!(big.estimator(300).unwrap().bins()[8].samples, 300);
        for (what, broken) in [
            ("short", {
                let mut f = file();
                f.bins.pop();
                f
            }),
            ("miscounted", {
                let mut f = file();
                f.samples = 2;
                f
            }),
            ("overflowing", {
                let mut f = file();
                f.bins[0].n = u64::MAX;
                f.bins[0].model = 0.3;
                f.bins[0].measured = 0.3;
                f.samples = u64::MAX;
                f
            }),
            ("negative", {
                let mut f = file();
                f.bins[8].measured = -0.7;
                f
            }),
        ] {
            let e = broken.estimator(300);
            assert!(e.is_err(), "{what}: {e:?}");
        }
        assert!(file().estimator(5).is_err(), "memory outside its range");
    }

    #[test]
    fn rejected_files_sit_next_to_the_original() {
        assert_eq!(
            rejected_path(Path::new("/var/lib/wattwise/calibration.json")),
            Path::new("/var/lib/wattwise/calibration.json.rejected")
        );
    }
}
